"""Building blocks shared by the model families."""

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp


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
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        y = jnp.tensordot(x, kernel, axes=(tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))))
        if self.bias_axes is not None:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), self.bias_axes),
                              tuple(self.features), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y
