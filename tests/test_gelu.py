"""GELU with a hand-written backward pass: nn.gelu's values and gradients, keeping only its input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from flax_lm.models.layers import gelu

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install flax_lm[torch])")


def _as_users_compile(f, x):
    """f(x) compiled with LLVM's optimisations, which conftest turns off for speed: without them
    XLA:CPU's float32 tanh near -1 is off by about 1e-6, so 1 - tanh**2 is 8e-6 where it is 1e-14."""
    return jax.jit(f).trace(x).lower().compile({"xla_backend_optimization_level": 2})(x)


@pytest.mark.parametrize("approximate", [False, True])
def test_values_and_gradients_equal_autodiff_of_nn_gelu(approximate):
    x = jnp.linspace(-12.0, 12.0, 20001)
    y, grad = _as_users_compile(jax.value_and_grad(lambda x: gelu(x, approximate).sum()), x)
    want = _as_users_compile(jax.grad(lambda x: nn.gelu(x, approximate=approximate).sum()), x)
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-6)
    torch_gelu = torch.nn.functional.gelu(torch.from_numpy(np.array(x)),  # a copy: torch wants it writable
                                          approximate="tanh" if approximate else "none")
    np.testing.assert_allclose(y, jnp.sum(nn.gelu(x, approximate=approximate)), rtol=1e-6)
    np.testing.assert_allclose(gelu(x, approximate), torch_gelu.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("approximate", [False, True])
def test_the_backward_pass_keeps_only_the_input(approximate):
    x = jnp.ones((4, 8), jnp.bfloat16)
    saved = saved_residuals(lambda x: gelu(x, approximate).sum(), x)
    assert [(r.shape, r.dtype) for r, _ in saved] == [((4, 8), jnp.bfloat16)]
    grad = jax.grad(lambda x: gelu(x, approximate).astype(jnp.float32).sum())(x)
    assert grad.dtype == jnp.bfloat16
