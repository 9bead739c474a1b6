"""Building blocks shared by the model families."""

import dataclasses
import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_lm import backends
from flax_lm.ops.explicit_attention import heads_first
from flax_lm.models.remat import POLICIES

# config dtype names -> JAX dtypes, for every family's compute and parameter dtypes
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtypes(cfg) -> dict:
    """A model config's compute and parameter dtypes, as Flax modules take them."""
    return {"dtype": DTYPES[cfg.dtype], "param_dtype": DTYPES[cfg.param_dtype]}


def from_run_config(cls, model_cfg, keys_of=None, **resolved):
    """The model config dataclass `cls` from the `model` section of a run config: the keys it (or
    the dataclass `keys_of`) has fields for, with `resolved` (values the family reads otherwise, e.g.
    a head's num_labels) over them."""
    fields = {f.name for f in dataclasses.fields(keys_of or cls)}
    return cls(**{**{k: v for k, v in model_cfg.items() if k in fields}, **resolved})


def layer_norm(cfg, name: str) -> nn.LayerNorm:
    """nn.LayerNorm with the config's epsilon and dtypes, its scale and bias on the "embed" axis."""
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_epsilon, **dtypes(cfg),
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)), name=name)


class Projection(nn.Module):
    """A dense layer over the last `len(in_axes)` input dimensions, to any output shape.

    The kernel is created in its final shape `in_shape + features` with logical axis
    names `in_axes + out_axes` (flax's DenseGeneral initialises a flattened kernel,
    which logical sharding constraints reject). `bias_axes` None means no bias.
    """

    features: tuple[int, ...]
    in_axes: tuple[str | None, ...]
    out_axes: tuple[str | None, ...]
    kernel_init: Callable
    bias_axes: tuple[str | None, ...] | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        n_in = len(self.in_axes)
        in_shape = x.shape[-n_in:]
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(self.kernel_init, self.in_axes + self.out_axes),
            in_shape + tuple(self.features), self.param_dtype)
        bias = None
        if self.bias_axes is not None:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), self.bias_axes),
                              tuple(self.features), self.param_dtype)
        return contract(x.astype(self.dtype), kernel.astype(self.dtype), bias, n_in)


def _plus_bias(y_f32, bias, dtype):
    """A float32 product plus `bias` (None: nothing), cast to the compute `dtype`."""
    if bias is not None:
        y_f32 = y_f32 + bias.astype(jnp.float32)
    return y_f32.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def contract(x, kernel, bias, n_in: int):
    """x (..., *in) . kernel (*in, *out) + bias (*out) -> (..., *out) in x's dtype, accumulated
    in float32 (the bias added before the cast, its gradient in the bias's dtype); `bias` None
    adds nothing.

    Float32 accumulation is more accurate for bf16. The backward pass is written out so that
    its dots also take bf16 inputs (float32 accumulation): autodiff would feed them the float32
    cotangent and multiply in float32.
    """
    return _contract(x, kernel, bias, n_in)


def _contract(x, kernel, bias, n_in):
    axes = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return _plus_bias(jnp.tensordot(x, kernel, axes=axes, preferred_element_type=jnp.float32), bias, x.dtype)


def _contract_fwd(x, kernel, bias, n_in):
    return _contract(x, kernel, bias, n_in), (x, kernel, bias)


def _contract_bwd(n_in, residuals, dy):
    x, kernel, bias = residuals
    n_batch = x.ndim - n_in
    dy = dy.astype(x.dtype)
    f32 = {"preferred_element_type": jnp.float32}
    dx = jnp.tensordot(dy, kernel, axes=(tuple(range(n_batch, dy.ndim)), tuple(range(n_in, kernel.ndim))),
                       **f32).astype(x.dtype)
    batch_axes = tuple(range(n_batch))
    dkernel = jnp.tensordot(x, dy, axes=(batch_axes, batch_axes), **f32).astype(kernel.dtype)
    # the bias's gradient summed in float32: over B x T rows a 16-bit sum loses the small terms
    return dx, dkernel, None if bias is None else jnp.sum(dy, axis=batch_axes, dtype=jnp.float32).astype(bias.dtype)


contract.defvjp(_contract_fwd, _contract_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gelu(x, approximate: bool):
    """`nn.gelu`, whose gradient keeps only its input: autodiff of the erf or tanh form keeps
    three more arrays of the feed-forward's width for the backward pass, each written into the
    scanned layers' stacks and read back (bert_base: 12 x 12.6 MB each a step). The exact form
    is computed with erf, as PyTorch does; `nn.gelu`'s erfc became three passes on XLA:CPU."""
    if approximate:
        return nn.gelu(x, approximate=True)
    return 0.5 * x * (1 + jax.lax.erf(x * math.sqrt(0.5)))


def _gelu_fwd(x, approximate):
    return gelu(x, approximate), x


def _gelu_bwd(approximate, x, dy):
    x32 = x.astype(jnp.float32)
    if approximate:  # d/dx of x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
        c = math.sqrt(2 / math.pi)
        t = jnp.tanh(c * (x32 + 0.044715 * x32 ** 3))
        slope = 0.5 * (1 + t) + 0.5 * x32 * (1 - t * t) * c * (1 + 3 * 0.044715 * x32 * x32)
    else:  # Phi(x) + x phi(x)
        slope = 0.5 * (1 + jax.lax.erf(x32 / math.sqrt(2))) + x32 * jnp.exp(-0.5 * x32 * x32) / math.sqrt(2 * math.pi)
    return ((dy.astype(jnp.float32) * slope).astype(dy.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def tied_logits(x_BxTxD, embed: nn.Embed):
    """Logits B x T x V against a token embedding (V x D), what `embed.attend` computes, as one
    product that contracts the table's minor dimension, accumulated in float32 and cast to the
    compute dtype, as `contract` does; its backward products take the compute dtype too."""
    x_BxTxD, table_VxD = nn.dtypes.promote_dtype(x_BxTxD, embed.embedding, dtype=embed.dtype)
    return _times_table(x_BxTxD, table_VxD).astype(x_BxTxD.dtype)


@jax.custom_vjp
def _times_table(x_BxTxD, table_VxD):
    """x . table^T accumulated in float32 (B x T x V), differentiated with products of x's dtype:
    autodiff fed them the float32 cotangent, and multiplied float32 copies of the 16-bit operands
    (bert_base's tied MLM head in bf16: a float32 copy of its 30522 x 768 table a step)."""
    return jnp.einsum("btd,vd->btv", x_BxTxD, table_VxD, preferred_element_type=jnp.float32)


def _times_table_fwd(x_BxTxD, table_VxD):
    return _times_table(x_BxTxD, table_VxD), (x_BxTxD, table_VxD)


def _times_table_bwd(residuals, dy_BxTxV):
    x_BxTxD, table_VxD = residuals
    dy_BxTxV = dy_BxTxV.astype(x_BxTxD.dtype)
    f32 = {"preferred_element_type": jnp.float32}
    dx = jnp.einsum("btv,vd->btd", dy_BxTxV, table_VxD, **f32).astype(x_BxTxD.dtype)
    return dx, jnp.einsum("btv,btd->vd", dy_BxTxV, x_BxTxD, **f32).astype(table_VxD.dtype)


_times_table.defvjp(_times_table_fwd, _times_table_bwd)


def empty_cache(batch: int, n_kv_heads: int, length: int, head_dim: int, dtype, n_layers: int,
                stacked: bool = False):
    """A key/value cache of `length` zero slots for `n_layers` layers: a tuple of per-layer
    {"k", "v"} of (B*K) x S x H (see `write_cache`), or with `stacked` one dict of
    L x (B*K) x S x H arrays (scanned layers)."""
    shape = (batch * n_kv_heads, length, head_dim)
    if stacked:
        zeros = jnp.zeros((n_layers, *shape), dtype)
        return {"k": zeros, "v": zeros}
    zeros = jnp.zeros(shape, dtype)
    return tuple({"k": zeros, "v": zeros} for _ in range(n_layers))


def write_cache(layer_cache: dict, k_BxTxKxH, v_BxTxKxH, cache_index) -> dict:
    """`layer_cache` ({"k", "v"}: (B*K) x S x H) with the T new keys and values in slots
    cache_index..cache_index+T-1, in the cache's dtype.

    Caches keep the layout of attention's batched products (`kv_cache_layout`), so that only
    the T new entries move. A B x S x K x H cache was transposed whole in every layer at every
    step (a third of a gpt2_small decoding step at batch 32 on CPU); a B x K x S x H one is
    copied by XLA:CPU at batch 1, where the product drops the batch dimension.
    """
    start = (0, cache_index, 0)
    return {name: jax.lax.dynamic_update_slice(layer_cache[name], heads_first(new).astype(layer_cache[name].dtype),
                                               start)
            for name, new in (("k", k_BxTxKxH), ("v", v_BxTxKxH))}


def grown_cache(cache, length: int):
    """An unstacked cache (`empty_cache`) with `length` slots: its own, then empty ones."""
    return jax.tree.map(lambda x_XxSxH: jnp.pad(x_XxSxH, ((0, 0), (0, length - x_XxSxH.shape[1]), (0, 0))), cache)


def split_qkv(qkv_BxTx3xNxH):
    """(q, k, v), each B x T x N x H, from a fused projection's output. A split, not three
    slices: its gradient is one concatenation, where the slices' is three pads and two sums."""
    return tuple(part[:, :, 0] for part in jnp.split(qkv_BxTx3xNxH, 3, axis=2))


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis: x / sqrt(mean(x^2) + eps) * scale, no mean and no
    bias (T5's T5LayerNorm, Llama's LlamaRMSNorm, Qwen3's q/k norms over each head). The mean square and the normalisation run in
    float32 whatever the compute dtype, as both do; the result is cast back before the scale."""

    epsilon: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scale_init: Callable = nn.initializers.ones_init()
    axis: str = "embed"  # the logical name of the normalised axis (Qwen3's per-head q/k norms: "head_dim")

    @nn.compact
    def __call__(self, x_BxTxD):
        scale_D = self.param("scale", nn.with_logical_partitioning(self.scale_init, (self.axis,)),
                             (x_BxTxD.shape[-1],), self.param_dtype)
        x_f32 = x_BxTxD.astype(jnp.float32)
        variance_BxTx1 = jnp.mean(jnp.square(x_f32), axis=-1, keepdims=True)
        return (x_f32 * jax.lax.rsqrt(variance_BxTx1 + self.epsilon)).astype(self.dtype) * scale_D.astype(self.dtype)


class LMHead(nn.Module):
    """An untied output projection D -> V with no bias, its kernel D x V (T5 v1.1's and Llama's lm_head)."""

    vocab_size: int
    kernel_init: Callable
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD, return_hidden: bool = False):
        """Logits B x T x V, or with `return_hidden` (x_BxTxD, the head as V x D) for the fused loss."""
        kernel_DxV = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, ("embed", "vocab")),
                                (x_BxTxD.shape[-1], self.vocab_size), self.param_dtype)
        if return_hidden:
            return x_BxTxD, kernel_DxV.T.astype(self.dtype)
        return contract(x_BxTxD.astype(self.dtype), kernel_DxV.astype(self.dtype), None, 1)


def run_blocks(block: type[nn.Module], block_args: tuple, n_layers: int, x_BxTxD, broadcast_args: tuple, cache,
               *, scan: bool, remat_policy: str, name: str, layer_inputs: tuple = ()):
    """Applies `n_layers` blocks `block(*block_args, name=...)` in turn; returns (x_BxTxD, cache).

    Call it inside a compact `__call__`: the blocks become children of the caller. Each block is
    called as block(x, *broadcast_args, layer_cache) -> (x, layer_cache). With `scan`, one block is
    scanned over the layers (parameters stacked under `name`, the cache stacked on its leading
    axis); else the blocks are `{name}_{i}` and `cache` is a tuple of per-layer caches (or None).
    `layer_inputs` are further per-layer arguments, after the cache and not returned (T5's cross
    keys and values): each None, or held as the cache is. `remat_policy` names a
    `flax_lm.models.remat.POLICIES` entry.
    """
    if remat_policy != "none":
        # prevent_cse only matters outside scan, where XLA could otherwise merge the recomputation away
        block = nn.remat(block, policy=POLICIES[remat_policy], prevent_cse=not scan)
    if scan:
        return nn.scan(
            block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(broadcast_args) + (0,) * (1 + len(layer_inputs)), length=n_layers,
            unroll=backends.current().scan_unroll(n_layers), metadata_params={nn.PARTITION_NAME: "layers"},
        )(*block_args, name=name)(x_BxTxD, *broadcast_args, cache, *layer_inputs)
    layer_caches = [None] * n_layers if cache is None else list(cache)
    for i in range(n_layers):
        inputs = tuple(None if values is None else values[i] for values in layer_inputs)
        x_BxTxD, layer_caches[i] = block(*block_args, name=f"{name}_{i}")(
            x_BxTxD, *broadcast_args, layer_caches[i], *inputs)
    return x_BxTxD, None if cache is None else tuple(layer_caches)
