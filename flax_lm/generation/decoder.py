"""A model as the decoding loops see it: prefill and one-token steps against a key/value cache.

Every loop calls `prepare(params, rows)` once (the model's variables as decoding applies them),
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
(`decoder.prepared(params, rows)`) and passes the result where the parameters go.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct, traverse_util

from flax_lm import few_rows, huge_pages, sharding
from flax_lm.models import family_module, t5
from flax_lm.models.layers import DTYPES, OUT_MAJOR, WIDENED, grown_cache


class _Decoder:
    """What every decoder shares. A model with scanned layers decodes through its unrolled twin:
    a scan over the layers slices every layer's weights out of the stacked arrays at each
    one-token step, which made decoding gpt2_small on CPU 1.6x slower (40 vs 25 ms a token)."""

    encoder_decoder = False

    def __init__(self, model):
        self.model = model
        self.unrolled = model.clone(cfg=dataclasses.replace(model.cfg, scan_layers=False)) \
            if model.cfg.scan_layers else model

    @property
    def max_len(self) -> int:
        return self.model.cfg.max_len

    # a frozen module is hashable, so a decoder can be a static argument of jit
    def __hash__(self):
        return hash(self.model)

    def __eq__(self, other):
        return type(other) is type(self) and other.model == self.model

    def prepare(self, params, rows: int):
        """The variables `forward` applies the model with, decoding `rows` sequences at a time
        (batch x beams): a scanned model's layers split into its unrolled twin's, every kernel
        and embedding table in the compute dtype, and on CPU the projection kernels also as
        (out, in) matrices (`layers.OUT_MAJOR`; a second copy of them for the loop's duration),
        or, where `few_rows.widened`, those and the token embedding tables in float32
        (`layers.WIDENED`). `params` already `Prepared` are taken as they are."""
        if isinstance(params, Prepared):
            return params.variables
        variables = {"params": self._unstacked(params)}
        if sharding.target_platform() == "cpu":
            variables[OUT_MAJOR] = self._one_token(variables, mutable=[OUT_MAJOR])[1][OUT_MAJOR]
        dtype = DTYPES[self.model.cfg.dtype]
        return _weights_in(variables, dtype, few_rows.widened(dtype, rows))

    def prepared(self, params, rows: int) -> "Prepared":
        """`params` made ready once for decoding `rows` sequences at a time, to pass to any number
        of `generate` calls in their place (calls with another number of rows get the same
        results, at the speed of the rows they were prepared for). Each call otherwise prepares
        them again: for gpt2_small on CPU that is 120-250 ms a call (splitting the stacked layers
        and transposing 85M weights), as much as 6 to 13 one-token steps at batch 1. The caller
        then holds the prepared copy. On CPU under Linux, the weights each step reads whole (the
        out-major or widened copies and the embedding tables) are also moved onto huge pages
        (`huge_pages`): about 1 s more for gpt2_small, once, for calls 2-7% faster at batch 1."""
        variables = _prepare(self, params, rows)
        streamed = [variables.get(OUT_MAJOR), variables.get(WIDENED),
                    [x for path, x in traverse_util.flatten_dict(variables["params"]).items()
                     if path[-1] == "embedding"]]
        huge_pages.collapse(streamed)
        return Prepared(variables)


@struct.dataclass
class Prepared:
    """A model's variables as a decoder applies them (`_Decoder.prepared`)."""

    variables: dict


@functools.partial(jax.jit, static_argnums=(0, 2))
def _prepare(decoder, params, rows: int):
    return decoder.prepare(params, rows)


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
        if self.unrolled is self.model:
            return params
        params = dict(params)
        stacked = params.pop(self.family.LAYERS)
        for i in range(self.model.cfg.n_layers):
            params[f"{self.family.LAYERS}_{i}"] = jax.tree.map(lambda x: x[i], stacked)
        return params

    def _one_token(self, variables, **kwargs):
        """The model applied to one token (what `prepare` fills `OUT_MAJOR` by)."""
        return self.unrolled.apply(variables, jnp.zeros((1, 1), jnp.int32), **kwargs)

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
        return t5.unstack_params(params, self.model.cfg) if self.unrolled is not self.model else params

    def _one_token(self, variables, **kwargs):
        """The decoder applied to one token over a one-position source."""
        encoded_1x1xD = jnp.zeros((1, 1, self.model.cfg.d_model), DTYPES[self.model.cfg.dtype])
        return self.unrolled.apply(variables, jnp.zeros((1, 1), jnp.int32), encoded_BxSxD=encoded_1x1xD,
                                   method="decode", **kwargs)

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


def _weights_in(variables, dtype, widened: bool):
    """`variables` with every kernel and embedding table in `dtype`, cast once per decoding loop.
    The model casts them at each use, which in a bfloat16 model read every float32 weight
    and wrote its bfloat16 copy at every step; the values it computes are the same.
    The `OUT_MAJOR` copies become `WIDENED` ones, those values in float32, where `widened`
    (`few_rows.widened`); else only their kernels are kept (the tables are the parameters' own)."""
    def cast(path, x):
        return x.astype(dtype) if sharding.param_names(path)[-1] in ("kernel", "embedding") else x
    cast_all = {"params": jax.tree_util.tree_map_with_path(cast, variables["params"])}
    if OUT_MAJOR in variables:
        copies = traverse_util.flatten_dict(variables[OUT_MAJOR])
        if widened:
            cast_all[WIDENED] = traverse_util.unflatten_dict(
                {path: x.astype(dtype).astype(jnp.float32) for path, x in copies.items()})
        else:
            cast_all[OUT_MAJOR] = traverse_util.unflatten_dict(
                {path: x.astype(dtype) for path, x in copies.items() if path[-1] == "kernel"})
    return cast_all


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
