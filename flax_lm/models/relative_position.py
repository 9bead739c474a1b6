"""T5's relative position bias: key-minus-query distances bucketed (exactly near, logarithmically
far), each bucket a learned bias per head. Shapes: T queries, S keys, N heads, K buckets."""

import math

import jax.numpy as jnp


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int, max_distance: int):
    """Mesh TensorFlow's bucketing of key position - query position (int array, any shape) into
    [0, num_buckets): exact buckets for small distances, logarithmic ones up to `max_distance`.
    Unidirectional (decoder self-attention) puts every later key in bucket 0. The float32
    arithmetic follows `transformers` step for step, so bucket edges agree exactly."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # max(., max_exact) keeps log away from 0 where the small branch is taken anyway
    far = jnp.maximum(distance, max_exact).astype(jnp.float32)
    large = max_exact + (jnp.log(far / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).astype(relative_position.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, distance, large)


def relative_bias(table_KxN, t: int, s: int, query_offset, bidirectional: bool, num_buckets: int,
                  max_distance: int):
    """The position bias 1 x N x T x S for queries at positions query_offset + 0..T-1 (a traced
    scalar is fine) and keys at 0..S-1, in float32."""
    relative_TxS = jnp.arange(s)[None, :] - (jnp.arange(t)[:, None] + query_offset)
    buckets_TxS = relative_position_bucket(relative_TxS.astype(jnp.int32), bidirectional, num_buckets, max_distance)
    bias_TxSxN = jnp.take(table_KxN.astype(jnp.float32), buckets_TxS, axis=0)
    return bias_TxSxN.transpose(2, 0, 1)[None]
