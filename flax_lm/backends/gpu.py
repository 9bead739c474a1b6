"""NVIDIA GPUs: cuDNN flash attention where it applies."""

import jax.numpy as jnp

from flax_lm.backends.base import Backend

# cuDNN's fused attention takes 16-bit inputs and head sizes that are multiples of 8 up to 128
# (jax.nn.dot_product_attention checks the same and raises otherwise).
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_CUDNN_MAX_HEAD_DIM = 128


class GpuBackend(Backend):
    name = "gpu"

    def attention(self, *, dtype, head_dim: int, bias: bool, cache: bool) -> str:
        """cuDNN flash attention for 16-bit training-shaped calls; XLA's for float32, odd head
        sizes and decoding (a cache's mask is a full matrix cuDNN does not take)."""
        del bias
        fits = (jnp.dtype(dtype) in _CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= _CUDNN_MAX_HEAD_DIM
                and not cache)
        return "cudnn" if fits else "xla"
