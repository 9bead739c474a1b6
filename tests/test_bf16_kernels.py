"""The native bfloat16 kernels (`flax_lm.bf16_kernels`): their products (of a few rows, and of many
where the CPU has AVX512-BF16) are float32 sums of the exact products, with the plain product's
gradient, their attention (AVX512-BF16 too) is softmax attention up to bfloat16 probabilities,
their rows the table's, and they are built once, or not at all without a compiler (decoding then
keeps float32 copies)."""

import logging
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_lm import bf16_kernels, few_rows

pytestmark = pytest.mark.skipif(not bf16_kernels.available(), reason="no C++ compiler to build the kernel")
needs_avx512_bf16 = pytest.mark.skipif(not bf16_kernels.has_avx512_bf16(), reason="the CPU has no AVX512-BF16")
PRODUCTS = [bf16_kernels.rows_times, pytest.param(bf16_kernels.dots, marks=needs_avx512_bf16)]


@pytest.mark.parametrize("times", PRODUCTS)
@pytest.mark.parametrize("rows, out, inputs", [(1, 50257, 768), (2, 97, 37), (3, 5, 3), (4, 2304, 64), (7, 1000, 65),
                                               (1, 0, 8), (13, 10, 70), (70, 9, 31), (130, 17, 96)])
def test_products_are_float32_sums_of_exact_products(times, rows, out, inputs):
    """Shapes with a remainder after 32 inputs, rows and outputs past a whole number of the kernels'
    tiles, more rows than they take at once, no outputs."""
    keys = jax.random.split(jax.random.PRNGKey(0))
    x_RxI = jax.random.normal(keys[0], (rows, inputs)).astype(jnp.bfloat16)
    kernel_FxI = jax.random.normal(keys[1], (out, inputs)).astype(jnp.bfloat16)
    y_RxF = jax.jit(times)(x_RxI, kernel_FxI)
    assert y_RxF.shape == (rows, out) and y_RxF.dtype == jnp.float32
    exact = np.asarray(x_RxI, np.float64) @ np.asarray(kernel_FxI, np.float64).T
    # float32 sums of `inputs` terms: within a few float32 roundings of each term's size
    bound = 4 * inputs * np.finfo(np.float32).eps * (np.abs(np.asarray(x_RxI, np.float64))
                                                     @ np.abs(np.asarray(kernel_FxI, np.float64)).T)
    assert np.all(np.abs(np.asarray(y_RxF) - exact) <= bound)
    np.testing.assert_array_equal(y_RxF, jax.jit(times)(x_RxI, kernel_FxI))  # the same bits again
    # a row's sums do not depend on the rows beside it: a sequence decodes alike in any batch
    np.testing.assert_array_equal(y_RxF[-1:], jax.jit(times)(x_RxI[-1:], kernel_FxI))


@pytest.mark.parametrize("times", PRODUCTS)
def test_its_gradient_is_the_plain_products(times):
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    x_RxI = jax.random.normal(keys[0], (2, 40)).astype(jnp.bfloat16)
    kernel_FxI = jax.random.normal(keys[1], (30, 40)).astype(jnp.bfloat16)
    dy_RxF = jax.random.normal(keys[2], (2, 30))

    def plain(x_RxI, kernel_FxI):
        return jnp.dot(x_RxI, kernel_FxI.T, preferred_element_type=jnp.float32)
    grads = [jax.vjp(f, x_RxI, kernel_FxI)[1](dy_RxF) for f in (times, plain)]
    for ours, theirs in zip(*grads):
        assert ours.dtype == theirs.dtype == jnp.bfloat16
        np.testing.assert_allclose(ours.astype(np.float32), theirs.astype(np.float32), rtol=1e-2, atol=1e-2)


@needs_avx512_bf16
@pytest.mark.parametrize("x, t, h, s, a", [(12, 1, 64, 96, 1), (64, 1, 64, 40, 8), (8, 3, 40, 17, 8),
                                           (6, 4, 100, 33, 6)])
def test_attend_is_softmax_attention_up_to_its_bfloat16_probabilities(x, t, h, s, a):
    """Head sizes and key counts past whole vectors; one mask for all products, one a sequence (8
    products each), one each; a query with every key masked attends to all alike, as XLA's form."""
    keys = jax.random.split(jax.random.PRNGKey(4), 4)
    q_XxTxH = (0.3 * jax.random.normal(keys[0], (x, t, h))).astype(jnp.bfloat16)
    k_XxSxH, v_XxSxH = (jax.random.normal(key, (x, s, h)).astype(jnp.bfloat16) for key in keys[1:3])
    allowed_AxTxS = jax.random.bernoulli(keys[3], 0.7, (a, t, s)).at[:, :, 0].set(True).at[0, 0].set(False)
    add_AxTxS = jnp.where(allowed_AxTxS, 0.0, -1e30)
    ours = np.asarray(jax.jit(bf16_kernels.attend)(q_XxTxH, k_XxSxH, v_XxSxH, add_AxTxS))
    q, k, v = (np.asarray(y, np.float64) for y in (q_XxTxH, k_XxSxH, v_XxSxH))
    scores = (np.einsum("xth,xsh->xts", q, k).reshape(a, x // a, t, s) + np.asarray(add_AxTxS)[:, None])
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).reshape(x, t, s)
    # each probability rounded to bfloat16 (8 bits) before it weighs v; the sums in float32
    bound = 2.0 ** -8 * np.einsum("xts,xsh->xth", p, np.abs(v)) + 1e-5
    assert np.all(np.abs(ours - np.einsum("xts,xsh->xth", p, v)) <= bound)
    np.testing.assert_allclose(ours[0, 0], v[0].mean(0), rtol=2.0 ** -8)  # every key masked: uniform


@pytest.mark.parametrize("shape", [(3,), (2, 5), (0,)])
def test_take_gives_the_tables_rows(shape):
    table_VxD = jax.random.normal(jax.random.PRNGKey(2), (11, 6)).astype(jnp.bfloat16)
    ids = jax.random.randint(jax.random.PRNGKey(3), shape, 0, 11)
    rows = jax.jit(bf16_kernels.take)(table_VxD, ids)
    assert rows.dtype == jnp.bfloat16
    np.testing.assert_array_equal(rows, jnp.take(table_VxD, ids, axis=0))


def test_take_refuses_an_id_out_of_range():
    with pytest.raises(Exception, match="a row id is out of range"):
        jax.block_until_ready(jax.jit(bf16_kernels.take)(jnp.zeros((4, 2), jnp.bfloat16), jnp.asarray([1, 4])))


def test_the_kernel_is_built_once_per_machine(tmp_path, monkeypatch):
    library = bf16_kernels.built(tmp_path)
    assert library.parent == tmp_path and list(tmp_path.iterdir()) == [library]  # no partial file left

    def compile_again(*args, **kwargs):
        raise AssertionError("built again")
    monkeypatch.setattr(subprocess, "run", compile_again)
    assert bf16_kernels.built(tmp_path) == library


def test_without_a_compiler_decoding_keeps_float32_copies(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FLAX_LM_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with caplog.at_level(logging.WARNING, logger=bf16_kernels.__name__):
        assert bf16_kernels.library.__wrapped__() is None
    assert "could not be built" in caplog.text and list(tmp_path.iterdir()) == []
    monkeypatch.setenv("CXX", "false")  # a compiler that fails: its partial output is removed
    with pytest.raises(subprocess.SubprocessError, match="failed"):
        bf16_kernels.built(tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(bf16_kernels, "available", lambda: False)
    monkeypatch.setattr(few_rows, "cpu_flags", lambda: frozenset())
    assert few_rows.widened("bfloat16", 1) and not few_rows.native("bfloat16", 1)


def test_it_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("FLAX_LM_NATIVE", "0")
    assert bf16_kernels.library.__wrapped__() is None
