"""Building blocks shared by the model families."""

import functools
from typing import Callable

import flax.linen as nn
import jax
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
        y = contract(x.astype(self.dtype), kernel.astype(self.dtype), n_in)
        if self.bias_axes is not None:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), self.bias_axes),
                              tuple(self.features), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def contract(x, kernel, n_in: int):
    """x (..., *in) . kernel (*in, *out) -> (..., *out) in x's dtype, accumulated in float32.

    Float32 accumulation is more accurate for bf16 and is the form XLA:CPU runs on
    AMX/bf16 units (a bf16-output dot takes a 5x slower path there). The backward pass
    is written out so that its dots also take bf16 inputs: autodiff would feed them
    the float32 cotangent and fall back to float32 matmuls.
    """
    return _contract(x, kernel, n_in)


def _contract(x, kernel, n_in):
    axes = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jnp.tensordot(x, kernel, axes=axes, preferred_element_type=jnp.float32).astype(x.dtype)


def _contract_fwd(x, kernel, n_in):
    return _contract(x, kernel, n_in), (x, kernel)


def _contract_bwd(n_in, residuals, dy):
    x, kernel = residuals
    n_batch = x.ndim - n_in
    dy = dy.astype(x.dtype)
    # dx = dy . kernel^T over the output axes; dkernel = x^T . dy over the batch axes.
    dx = jnp.tensordot(dy, kernel, axes=(tuple(range(n_batch, dy.ndim)), tuple(range(n_in, kernel.ndim))),
                       preferred_element_type=jnp.float32).astype(x.dtype)
    dkernel = jnp.tensordot(x, dy, axes=(tuple(range(n_batch)), tuple(range(n_batch))),
                            preferred_element_type=jnp.float32).astype(kernel.dtype)
    return dx, dkernel


contract.defvjp(_contract_fwd, _contract_bwd)
