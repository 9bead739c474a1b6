"""Pallas splash attention (TPU flash attention with block-sparse masks) behind
`dot_product_attention(..., implementation="splash")`.

The kernel works on one example's N x T x H heads; this module fits it to the B x T x N x H
interface: a vmap over the batch, the key mask and packed documents as segment ids, q scaled
beforehand (the kernel does not scale). Under a device mesh it runs per device in a shard_map,
because GSPMD cannot partition a Mosaic custom call. Off TPU it runs in Pallas interpret mode,
so the CPU test suite checks the very kernel that runs on TPU.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

from flax_lm import backends
from flax_lm.parallel import sharding

# 512 x 512 blocks amortize the kernel's per-block overhead and fill the MXU (MaxText's
# default) while the f32 score tile (1 MiB) stays well inside VMEM; shorter sequences take
# the largest of these that divides them. 128 is the TPU lane width, the smallest block.
BLOCK_SIZES = (512, 256, 128)


def unsupported(t: int, s: int, causal: bool, segment_ids_BxT, query_offset, bias_BxNxTxS) -> str | None:
    """None where the kernel computes this attention (T queries, S keys), else what it does not
    take, for the caller's one-line fallback."""
    aligned = isinstance(query_offset, int) and query_offset == 0  # a KV cache's offset is traced
    if bias_BxNxTxS is not None:
        return "an attention bias"
    if causal and not aligned:
        return "queries offset into a decoding cache"
    if t % BLOCK_SIZES[-1] or s % BLOCK_SIZES[-1]:
        return f"{t} queries x {s} keys (not multiples of {BLOCK_SIZES[-1]})"
    if segment_ids_BxT is not None and t != s:
        return "segment ids with queries and keys of different lengths"
    return None


def splash_attention(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, *, causal: bool, kv_mask_BxS=None,
                     segment_ids_BxT=None, scale: float) -> jax.Array:
    """softmax(scale * q k^T) v with `dot_product_attention`'s masks; B x T x N x H in q's dtype.

    `unsupported` must be None. Under `jax.set_mesh` the batch is split over the mesh axes of the
    logical "batch" axis and the heads over those of "act_heads", where they divide evenly.
    """
    q_BxTxNxH = q_BxTxNxH * jnp.asarray(scale, q_BxTxNxH.dtype)
    masks = {}  # segment ids and key mask, B x T / B x S each, split like the batch
    if segment_ids_BxT is not None:
        masks["q_segments_BxT"] = masks["kv_segments_BxS"] = segment_ids_BxT.astype(jnp.int32)
    elif kv_mask_BxS is not None:  # one segment: only the key mask matters
        masks["q_segments_BxT"] = jnp.zeros(q_BxTxNxH.shape[:2], jnp.int32)
        masks["kv_segments_BxS"] = jnp.zeros(k_BxSxNxH.shape[:2], jnp.int32)
    if kv_mask_BxS is not None:
        masks["kv_mask_BxS"] = kv_mask_BxS.astype(bool)
    mesh = jax.sharding.get_abstract_mesh()  # the one jax.set_mesh made ambient, if any
    local = functools.partial(_local_attention, causal=causal, interpret=not backends.current().compiles_pallas)
    if mesh.empty or mesh.size == 1:
        return local(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, masks)
    batch = _mesh_axes("batch", q_BxTxNxH.shape[0], mesh)
    heads_spec = P(batch, None, _mesh_axes("act_heads", q_BxTxNxH.shape[2], mesh), None)
    masks_spec = {name: P(batch, None) for name in masks}
    # check_vma=False: the Pallas call carries no record of which mesh axes its output varies over.
    return jax.shard_map(local, mesh=mesh, in_specs=(heads_spec,) * 3 + (masks_spec,), out_specs=heads_spec,
                         check_vma=False)(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, masks)


def _mesh_axes(logical: str, size: int, mesh) -> tuple[str, ...] | None:
    """The mesh axes `sharding.LOGICAL_AXIS_RULES` maps `logical` to, or None (replicated) where
    their devices do not divide `size`."""
    axes = dict(sharding.LOGICAL_AXIS_RULES)[logical]
    axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a in mesh.axis_names)
    return axes if axes and size % math.prod(mesh.shape[a] for a in axes) == 0 else None


def _local_attention(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, masks: dict, *, causal: bool, interpret: bool):
    """The kernel on one device's examples and heads (pre-scaled q); B x T x N x H."""
    (_, t, n, _), s = q_BxTxNxH.shape, k_BxSxNxH.shape[1]
    mask = splash.CausalMask((t, s)) if causal else splash.FullMask((t, s))
    bq, bkv = (next(size for size in BLOCK_SIZES if length % size == 0) for length in (t, s))
    block_sizes = splash.BlockSizes(block_q=bq, block_kv=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                                    block_q_dq=bq, block_kv_dq=bkv)
    kernel = splash.make_splash_mha_single_device(splash.MultiHeadMask([mask] * n), block_sizes=block_sizes,
                                                  interpret=interpret)
    segment_ids = None
    if masks:
        # A padded key gets a segment id no query has: one below the smallest.
        q_BxT, kv_BxS = masks["q_segments_BxT"], masks["kv_segments_BxS"]
        if "kv_mask_BxS" in masks:
            kv_BxS = jnp.where(masks["kv_mask_BxS"], kv_BxS, jnp.min(q_BxT, axis=1, keepdims=True) - 1)
        segment_ids = splash.SegmentIds(q=q_BxT, kv=kv_BxS)
    out_BxNxTxH = jax.vmap(lambda q, k, v, ids: kernel(q, k, v, segment_ids=ids))(
        _swap_length_heads(q_BxTxNxH), _swap_length_heads(k_BxSxNxH), _swap_length_heads(v_BxSxNxH), segment_ids)
    out_BxTxNxH = _swap_length_heads(out_BxNxTxH).astype(q_BxTxNxH.dtype)
    if "kv_mask_BxS" not in masks:
        return out_BxTxNxH
    # A query no key may attend to (padding) gets the other implementations' uniform average of
    # all S values. The kernel would average only the keys of the blocks it visits, and its
    # backward pass does not zero such a row's dq; with the row replaced, no gradient reaches it.
    has_key_BxT = jax.vmap(functools.partial(_has_key, causal))(
        masks["q_segments_BxT"], masks["kv_segments_BxS"], masks["kv_mask_BxS"])
    mean_v_Bx1xNxH = jnp.mean(v_BxSxNxH.astype(jnp.float32), axis=1, keepdims=True).astype(out_BxTxNxH.dtype)
    return jnp.where(has_key_BxT[:, :, None, None], out_BxTxNxH, mean_v_Bx1xNxH)


def _swap_length_heads(x):
    """B x L x N x H <-> B x N x L x H."""
    return x.transpose(0, 2, 1, 3)


def _has_key(causal: bool, q_segments_T, kv_segments_S, kv_mask_S) -> jax.Array:
    """T booleans: whether query t has a key s that the mask allows, of its segment and, when
    causal, s <= t. O(S log S): keys sorted by (segment, allowed first, position) put each
    segment's earliest allowed key first among its keys."""
    s = kv_segments_S.shape[0]
    kv_sorted, blocked_sorted, pos_sorted = jax.lax.sort(
        (kv_segments_S, (~kv_mask_S).astype(jnp.int32), jnp.arange(s)), num_keys=3)
    first_T = jnp.minimum(jnp.searchsorted(kv_sorted, q_segments_T), s - 1)
    has_key_T = (kv_sorted[first_T] == q_segments_T) & (blocked_sorted[first_T] == 0)
    if causal:
        has_key_T &= pos_sorted[first_T] <= jnp.arange(q_segments_T.shape[0])
    return has_key_T
