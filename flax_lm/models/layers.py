"""Building blocks shared by the model families."""

import dataclasses
import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_lm import bf16_kernels, few_rows, sharding
from flax_lm.attention import heads_first
from flax_lm.models.remat import POLICIES
from flax_lm.weight_grad import weight_grad

# config dtype names -> JAX dtypes, for every family's compute and parameter dtypes
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtypes(cfg) -> dict:
    """A model config's compute and parameter dtypes, as Flax modules take them."""
    return {"dtype": DTYPES[cfg.dtype], "param_dtype": DTYPES[cfg.param_dtype]}


def from_run_config(cls, model_cfg, **resolved):
    """The model config dataclass `cls` from the `model` section of a run config: the keys it has
    fields for, with `resolved` (values the family derives, e.g. d_ff from d_model) over them."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in model_cfg.items() if k in fields}, **resolved})


# A variable collection of projection kernels as (out, in) matrices, which decoding on CPU
# fills once per loop (`generation.decoder`): XLA:CPU's small-batch products read that layout
# faster: gpt2_small's decoding step 24.0 -> 21.7 ms at batch 1 and 91 -> 74 ms at batch 32.
OUT_MAJOR = "out_major"
# The same copies in float32, holding 16-bit values exactly, where decoding a few rows multiplies
# in float32 (`few_rows.widened`), with the token embeddings' tables (`Embed`).
WIDENED = "widened"


def out_major(module: nn.Module, name: str, matrix_FxI, dtype):
    """`module`'s copy of `matrix_FxI` (its variable `name` as an (out, in) matrix) for a product
    in `dtype`: the `WIDENED` copy, else the `OUT_MAJOR` copy in `dtype`, else None. Where
    `OUT_MAJOR` is being filled, `matrix_FxI` is stored there first."""
    if module.is_mutable_collection(OUT_MAJOR) and not module.is_initializing():
        module.put_variable(OUT_MAJOR, name, matrix_FxI)
    if module.has_variable(WIDENED, name):
        return module.get_variable(WIDENED, name)
    return module.get_variable(OUT_MAJOR, name).astype(dtype) if module.has_variable(OUT_MAJOR, name) else None


class Projection(nn.Module):
    """A dense layer over the last `len(in_axes)` input dimensions, to any output shape.

    The kernel is created in its final shape `in_shape + features` with logical axis
    names `in_axes + out_axes` (flax's DenseGeneral initialises a flattened kernel,
    which logical sharding constraints reject). `bias_axes` None means no bias.
    Applied with `OUT_MAJOR` mutable, it stores its kernel there as an (out, in) matrix;
    applied with one there, it reads that instead.
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
        kernel_FxI = out_major(self, "kernel", kernel.reshape(math.prod(in_shape), -1).T, self.dtype)
        if kernel_FxI is not None:
            return _contract_out_major(x.astype(self.dtype), kernel_FxI, bias, n_in, tuple(self.features))
        return contract(x.astype(self.dtype), kernel.astype(self.dtype), bias, n_in)


def _contract_out_major(x, kernel_FxI, bias, n_in: int, features: tuple[int, ...]):
    """`contract` with the kernel as an (out, in) matrix: F = prod(features) outputs, I inputs."""
    batch = x.shape[:-n_in]
    # as rows x inputs: XLA:CPU's bfloat16 product of batch 32 x 1 x 768 took a slower path
    y_RxF = few_rows.rows_times(x.reshape(math.prod(batch), -1), kernel_FxI, decoding=True)
    return _plus_bias(y_RxF.reshape(*batch, *features), bias, x.dtype)


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

    Float32 accumulation is more accurate for bf16 and is the form XLA:CPU runs on
    AMX/bf16 units (a bf16-output dot takes a 5x slower path there). The backward pass
    is written out so that its dots also take bf16 inputs: autodiff would feed them
    the float32 cotangent and fall back to float32 matmuls.
    """
    return _contract(x, kernel, bias, n_in)


def _contract(x, kernel, bias, n_in):
    x, restore = few_rows.as_rows(x, n_in)
    axes = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return _plus_bias(restore(jnp.tensordot(x, kernel, axes=axes, preferred_element_type=jnp.float32)), bias, x.dtype)


def _contract_fwd(x, kernel, bias, n_in):
    return _contract(x, kernel, bias, n_in), (x, kernel, bias)


def _contract_bwd(n_in, residuals, dy):
    x, kernel, bias = residuals
    n_batch = x.ndim - n_in
    dy = dy.astype(x.dtype)
    f32 = {"preferred_element_type": jnp.float32}
    dx = jnp.tensordot(dy, kernel, axes=(tuple(range(n_batch, dy.ndim)), tuple(range(n_in, kernel.ndim))),
                       **f32).astype(x.dtype)
    grads = weight_grad(x, dy, n_batch, with_bias=bias is not None)
    if bias is None:
        return dx, grads.astype(kernel.dtype), None
    dkernel, dbias = grads
    return dx, dkernel.astype(kernel.dtype), dbias.astype(bias.dtype)


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


class Embed(nn.Embed):
    """`nn.Embed` whose lookups read only the rows they take: XLA:CPU gathers from a 16-bit
    table by converting all of it to float32 first, once a decoding loop (gpt2_small: 38 ms a
    `generate` call). A table already in the compute dtype is looked up by `rows_of`, and
    decoding's `WIDENED` copy is taken where there is one. The rows are the same values."""

    def __call__(self, inputs):
        table_VxD = out_major(self, "embedding", self.embedding, self.dtype)
        if table_VxD is None:
            if self.embedding.dtype != self.dtype:
                return super().__call__(inputs)
            table_VxD = self.embedding
        return rows_of(table_VxD, inputs).astype(self.dtype)


@jax.custom_vjp
def rows_of(table_VxD, ids):
    """table_VxD's rows `ids` (`jnp.take` on axis 0), taken by the native kernel where it runs
    (`bf16_kernels.take`), else moved as 16-bit integers on CPU (`_moved`), with `jnp.take`'s
    gradient (the bits of a bitcast have none)."""
    if bf16_kernels.runs(table_VxD.dtype):
        return bf16_kernels.take(table_VxD, ids)
    return _moved(lambda table_VxD: jnp.take(table_VxD, ids, axis=0), table_VxD)


def _rows_of_fwd(table_VxD, ids):
    return rows_of(table_VxD, ids), (table_VxD, ids)


def _rows_of_bwd(residuals, d_rows):
    table_VxD, ids = residuals
    return jax.vjp(lambda table_VxD: jnp.take(table_VxD, ids, axis=0), table_VxD)[1](d_rows)[0], None


rows_of.defvjp(_rows_of_fwd, _rows_of_bwd)


def tied_logits(x_BxTxD, embed: nn.Embed, decoding: bool = False):
    """Logits B x T x V against a token embedding (V x D), what `embed.attend` computes, as one
    product that contracts the table's minor dimension: `attend` transposes the table first,
    and at batch 1 XLA:CPU fused that transpose into a copy of the whole table at every
    decoding step (gpt2_small: 154 MB, 11 of 26 ms a token). Accumulated in float32 and cast to the
    compute dtype, as `contract` does: the values a 16-bit product gives, and XLA:CPU's fast path.
    `decoding` (a call with a key/value cache) lets many rows take a native kernel (`few_rows`)."""
    x_BxTxD, table_VxD = nn.dtypes.promote_dtype(x_BxTxD, embed.embedding, dtype=embed.dtype)
    copy_VxD = out_major(embed, "embedding", embed.embedding, embed.dtype)  # decoding's copy, if any
    b, t, d = x_BxTxD.shape
    # as rows x D: with more dimensions XLA:CPU copied the table transposed, to (D, V), which its
    # product reads at half the speed (gpt2_small decoding in bf16, batch 32: 13 -> 6 ms a step)
    logits_RxV = few_rows.rows_times(x_BxTxD.reshape(b * t, d), table_VxD if copy_VxD is None else copy_VxD,
                                     decoding=decoding)
    return logits_RxV.astype(x_BxTxD.dtype).reshape(b, t, -1)


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
    return {name: _updated(layer_cache[name], heads_first(new).astype(layer_cache[name].dtype), start)
            for name, new in (("k", k_BxTxKxH), ("v", v_BxTxKxH))}


def grown_cache(cache, length: int):
    """An unstacked cache (`empty_cache`) with `length` slots: its own, then empty ones."""
    def pad(x_XxSxH):
        return jnp.pad(x_XxSxH, ((0, 0), (0, length - x_XxSxH.shape[1]), (0, 0)))
    return jax.tree.map(lambda x: _moved(pad, x), cache)


def _updated(cache, new, start):
    """`cache` with `new` written at `start` (in place: at batch 32, a float32 round trip of
    the whole cache was 7.5 of gpt2_small's 60 ms decoding step; see `_moved`)."""
    return _moved(lambda cache, new: jax.lax.dynamic_update_slice(cache, new, start), cache, new)


def _moved(move, *arrays):
    """move(*arrays), a function that only moves values, on CPU with 16-bit float arrays taken
    as 16-bit integers: XLA:CPU moves bfloat16 values (an update, a pad) by converting all of
    the array to float32 and back, and integers as they are."""
    dtype = arrays[0].dtype
    if dtype not in (jnp.bfloat16, jnp.float16) or sharding.target_platform() != "cpu":
        return move(*arrays)
    bits = move(*(jax.lax.bitcast_convert_type(x, jnp.uint16) for x in arrays))
    return jax.lax.bitcast_convert_type(bits, dtype)


def split_qkv(qkv_BxTx3xNxH):
    """(q, k, v), each B x T x N x H, from a fused projection's output. A split, not three
    slices: its gradient is one concatenation, where the slices' is three pads and two sums."""
    return tuple(part[:, :, 0] for part in jnp.split(qkv_BxTx3xNxH, 3, axis=2))


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis: x / sqrt(mean(x^2) + eps) * scale, no mean and no
    bias (T5's T5LayerNorm, Llama's LlamaRMSNorm). The mean square and the normalisation run in
    float32 whatever the compute dtype, as both do; the result is cast back before the scale."""

    epsilon: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scale_init: Callable = nn.initializers.ones_init()

    @nn.compact
    def __call__(self, x_BxTxD):
        scale_D = self.param("scale", nn.with_logical_partitioning(self.scale_init, ("embed",)),
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
        kernel_VxD = out_major(self, "kernel", kernel_DxV.T, self.dtype)
        if kernel_VxD is not None:
            return _contract_out_major(x_BxTxD.astype(self.dtype), kernel_VxD, None, 1, (self.vocab_size,))
        return contract(x_BxTxD.astype(self.dtype), kernel_DxV.astype(self.dtype), None, 1)


def scan_unroll(n_layers: int) -> int:
    """The layers a scan over `n_layers` runs in one loop iteration: all of them on a CPU, else 1.

    XLA:CPU runs a scanned loop's bookkeeping (each layer's weights cast and sliced out of the
    stacks, its residuals and gradients written into theirs) as passes of their own: bert_base's
    bf16 train step at batch 8 took 2.16-2.25 s scanned and 1.82-1.92 s unrolled (fp32 3.44-4.03
    against 3.28-3.39 s). Unrolled inside the scan, the parameters keep their stacked layout, so a
    checkpoint moves between a CPU and an accelerator as it is."""
    return n_layers if sharding.target_platform() == "cpu" else 1


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
            unroll=scan_unroll(n_layers), metadata_params={nn.PARTITION_NAME: "layers"},
        )(*block_args, name=name)(x_BxTxD, *broadcast_args, cache, *layer_inputs)
    layer_caches = [None] * n_layers if cache is None else list(cache)
    for i in range(n_layers):
        inputs = tuple(None if values is None else values[i] for values in layer_inputs)
        x_BxTxD, layer_caches[i] = block(*block_args, name=f"{name}_{i}")(
            x_BxTxD, *broadcast_args, layer_caches[i], *inputs)
    return x_BxTxD, None if cache is None else tuple(layer_caches)
