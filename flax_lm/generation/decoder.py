"""A model as the decoding loops see it: prefill and one-token steps against a key/value cache.

Every loop calls `prepare(params)` once (the model's variables as decoding applies them),
then `start(prepared, context, batch, length)` for the cache, then `forward(prepared, ids_BxT,
mask_BxS, positions_BxT, cache, index)`: the T tokens go into cache slots index..index+T-1,
attend to the slots `mask_BxS` allows up to their own, and the last one comes back as logits
B x 1 x V with the updated cache (a prefill needs no other position's: their output projection
was 30% of gpt2_small's prefill FLOPs). `grow(cache, length)` gives the cache more slots
between the phases of a loop, and `init_cache(batch, length)` is the part of the cache that
grows (`growing` sizes the phases by it). `context` is what the decoder is conditioned on
besides its own tokens: None for a decoder-only model, the encoder's input for an
encoder-decoder. A new model family plugs in here and every strategy (greedy, sampling, beam
search) works with it.

A caller that decodes many batches with the same weights prepares them once
(`decoder.prepared(params)`) and passes the result where the parameters go.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct

from flax_lm.parallel import sharding
from flax_lm.models import family_module, lora, t5
from flax_lm.models.layers import DTYPES, grown_cache


class _Decoder:
    """What every decoder shares. A model with scanned layers decodes through its unrolled twin:
    a scan over the layers would slice every layer's weights out of the stacked arrays at each
    one-token step. A LoRA model (`lora.adapted`) decodes as its plain model with the adapters
    merged into the kernels (W + (alpha / r) A.B, as PEFT's merge_and_unload): the same function,
    without the adapters' two extra matmuls per projection at every step."""

    encoder_decoder = False

    def __init__(self, model):
        self.model = model
        self.lora = getattr(model, "lora", None)
        plain = lora.unadapted(model)
        self.unrolled = plain.clone(cfg=dataclasses.replace(model.cfg, scan_layers=False)) \
            if model.cfg.scan_layers else plain

    @property
    def max_len(self) -> int:
        return self.model.cfg.max_len

    # a frozen module is hashable, so a decoder can be a static argument of jit
    def __hash__(self):
        return hash(self.model)

    def __eq__(self, other):
        return type(other) is type(self) and other.model == self.model

    def prepare(self, params):
        """The variables `forward` applies the model with: a scanned model's layers split into its
        unrolled twin's, every kernel and embedding table in the compute dtype. `params` already
        `Prepared` are taken as they are."""
        if isinstance(params, Prepared):
            return params.variables
        if self.lora is not None:
            params = lora.merge(params, self.lora)
        return _weights_in({"params": self._unstacked(params)}, DTYPES[self.model.cfg.dtype])

    def prepared(self, params) -> "Prepared":
        """`params` made ready once for decoding, to pass to any number of `generate` calls in their
        place: each call otherwise prepares them again (splitting stacked layers and casting every
        weight), as much as several one-token steps at batch 1. The caller then holds the copy."""
        return Prepared(_prepare(self, params))


@struct.dataclass
class Prepared:
    """A model's variables as a decoder applies them (`_Decoder.prepared`)."""

    variables: dict


@functools.partial(jax.jit, static_argnums=0)
def _prepare(decoder, params):
    return decoder.prepare(params)


class CausalDecoder(_Decoder):
    """A decoder-only model (`GPT2LMHeadModel`, `LlamaForCausalLM`) behind the decoding interface."""

    def __init__(self, model):
        super().__init__(model)
        self.family = family_module(model.cfg)  # its init_cache and its layers' parameter name

    def init_cache(self, batch: int, length: int):
        return self.family.init_cache(self.unrolled.cfg, batch, length)

    def start(self, prepared, context, batch: int, length: int):
        """An empty cache of `length` slots (a decoder-only model has no context)."""
        return self.init_cache(batch, length)

    def grow(self, cache, length: int):
        """`cache` (from `start`) with `length` slots, the new ones empty."""
        return grown_cache(cache, length)

    def _unstacked(self, params):
        """Stacked layers split into `h_{i}` (`h` the family's LAYERS)."""
        if not self.model.cfg.scan_layers:
            return params
        params = dict(params)
        stacked = params.pop(self.family.LAYERS)
        for i in range(self.model.cfg.n_layers):
            params[f"{self.family.LAYERS}_{i}"] = jax.tree.map(lambda x: x[i], stacked)
        return params

    def forward(self, prepared, ids_BxT, mask_BxS, positions_BxT, cache, index):
        return self.unrolled.apply(prepared, ids_BxT, attention_mask_BxT=mask_BxS,
                                   position_ids_BxT=positions_BxT, cache=cache, cache_index=index, logits_to_keep=1)

class Seq2SeqDecoder(_Decoder):
    """An encoder-decoder (`T5ForConditionalGeneration`) behind the decoding interface.

    The context is the encoder's input (ids B x S, mask B x S). `start` runs the encoder once
    and computes every decoder layer's cross-attention keys and values from its output; the
    cache holds them with the self-attention slots and the encoder mask, so each step runs
    only the decoder. Scanned layers decode through the unrolled twin, as in `CausalDecoder`.
    """

    encoder_decoder = True

    def _unstacked(self, params):
        return t5.unstack_params(params, self.model.cfg) if self.model.cfg.scan_layers else params

    def init_cache(self, batch: int, length: int):
        """The decoder's empty self-attention cache (`start` adds the encoder's part)."""
        return t5.init_cache(self.unrolled.cfg, batch, length)

    def start(self, prepared, context, batch: int, length: int):
        ids_BxS, mask_BxS = context
        encoded_BxSxD = self.unrolled.apply(prepared, ids_BxS, mask_BxS, method="encode")
        return {"self": self.init_cache(batch, length), "encoder_mask": mask_BxS,
                "cross": self.unrolled.apply(prepared, encoded_BxSxD, method="cross_cache")}

    def grow(self, cache, length: int):
        """`cache` (from `start`) with `length` self-attention slots, the new ones empty."""
        return {**cache, "self": grown_cache(cache["self"], length)}

    def forward(self, prepared, ids_BxT, mask_BxS, positions_BxT, cache, index):
        """As `CausalDecoder.forward`; T5 has no absolute positions, so `positions_BxT` is unused
        (relative positions come from the cache slots)."""
        logits_BxTxV, self_cache = self.unrolled.apply(
            prepared, ids_BxT, attention_mask_BxS=cache["encoder_mask"],
            decoder_attention_mask_BxT=mask_BxS, cache=cache["self"], cross_cache=cache["cross"],
            cache_index=index, logits_to_keep=1, method="decode")
        return logits_BxTxV, {**cache, "self": self_cache}


def for_model(model):
    """The decoder of a generative flax_lm model."""
    return Seq2SeqDecoder(model) if isinstance(model, t5.T5ForConditionalGeneration) else CausalDecoder(model)


def _weights_in(variables, dtype):
    """`variables` with every kernel and embedding table in `dtype`, cast once per decoding loop.
    The model casts them at each use, which in a bfloat16 model read every float32 weight and
    wrote its bfloat16 copy at every step; the values it computes are the same."""
    def cast(path, x):
        return x.astype(dtype) if sharding.param_names(path)[-1] in ("kernel", "embedding") else x
    return {"params": jax.tree_util.tree_map_with_path(cast, variables["params"])}


def reorder_cache(cache, rows_B: jax.Array):
    """The cache with its batch rows taken in the order `rows_B` (beam search follows its beams).
    Decoding caches are unscanned: every array leads with the batch, or with batch x heads
    flattened (keys and values, `layers.write_cache`), whose rows move in blocks."""
    def take(c):
        return jnp.take(c.reshape(rows_B.shape[0], -1), rows_B, axis=0).reshape(c.shape)
    return jax.tree.map(take, cache)


def left_pad_positions(mask_BxP: jax.Array) -> jax.Array:
    """Position ids of left-padded prompts, as `transformers` computes them: each row counts its
    real tokens from 0; padding gets 1 (its value is never attended to)."""
    positions_BxP = jnp.cumsum(mask_BxP.astype(jnp.int32), axis=-1) - 1
    return jnp.where(mask_BxP, positions_BxP, 1)
