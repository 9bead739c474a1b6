"""Decoding in 16-bit on CPU (`flax_lm.few_rows`) runs its bfloat16 products of a few rows as the
native kernel (`native`), pads them to four rows (bfloat16 on a CPU with AMX where there is no
kernel) or multiplies float32 copies of the 16-bit weights (`widened`); where the CPU has
AVX512-BF16 it runs products of more rows and a step's attention as native kernels too; and it
computes the same logits as the plain 16-bit product."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from flax_lm import attention, bf16_kernels, few_rows
from flax_lm.generation import CausalDecoder, Seq2SeqDecoder
from flax_lm.models import gpt2, llama, t5
from flax_lm.models.layers import OUT_MAJOR, WIDENED

AMX, NO_AMX = frozenset({"avx512f", "amx_bf16"}), frozenset({"avx512f", "avx512_bf16"})



needs_kernel = pytest.mark.skipif(not bf16_kernels.available(), reason="no C++ compiler to build the kernel")


@pytest.fixture
def no_native(monkeypatch):
    """As where the native kernel cannot be built."""
    monkeypatch.setattr(bf16_kernels, "available", lambda: False)


MODELS = {  # tiny, one of each family: gpt2 (tied head), llama (grouped keys, untied head), t5 (a bias)
    "gpt2": lambda dtype: gpt2.GPT2LMHeadModel(gpt2.GPT2Config(
        vocab_size=97, max_len=32, d_model=32, n_layers=2, n_heads=4, d_ff=64, dtype=dtype)),
    "llama": lambda dtype: llama.LlamaForCausalLM(llama.LlamaConfig(
        vocab_size=97, max_len=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, dtype=dtype)),
    "t5": lambda dtype: t5.T5ForConditionalGeneration(t5.T5Config(
        vocab_size=97, max_len=32, d_model=32, n_heads=4, d_ff=48, n_layers=2, dtype=dtype)),
}


@pytest.mark.parametrize("n, dtype, rows_each, count", [
    (1, jnp.bfloat16, 1, 3), (2, jnp.float16, 1, 2), (4, jnp.bfloat16, 1, 0), (1, jnp.float32, 1, 0),
    (1, jnp.bfloat16, 2, 1), (1, jnp.bfloat16, 3, 1), (2, jnp.bfloat16, 2, 0)])
def test_extra_makes_four_rows_of_16_bit_products_only(n, dtype, rows_each, count):
    assert few_rows.extra(n, dtype, rows_each) == count


def _one_token_step(family: str, dtype: str, batch: int = 1):
    """(the jitted one-token decoding step of a tiny `family` model for `batch` sequences, its
    prepared variables)."""
    model = MODELS[family](dtype)
    ids_Bx5 = jnp.asarray([[5, 17, 33, 2, 60]]) + jnp.arange(batch)[:, None]
    if family == "t5":
        decoder = Seq2SeqDecoder(model)
        params = model.init(jax.random.PRNGKey(0), ids_Bx5, ids_Bx5[:, :2])["params"]
        context = (ids_Bx5, jnp.ones((batch, 5), bool))
    else:
        decoder, context = CausalDecoder(model), None
        params = model.init(jax.random.PRNGKey(0), ids_Bx5)["params"]
    prepared = decoder.prepare(params, batch)

    def step(variables):
        cache = decoder.start(variables, context, batch, 8)
        return decoder.forward(variables, ids_Bx5[:, :1], jnp.ones((batch, 8), bool),
                               jnp.zeros((batch, 1), jnp.int32), cache, 0)[0].astype(jnp.float32)
    return jax.jit(step), prepared


def _products(step, variables) -> set[tuple[int, str]]:
    """(rows, element type) of the step's products: rows the dimension before the contracted last one."""
    text = step.lower(variables).as_text()
    operand = r"dot_general.*?: \(tensor<(?:\d+x)*?(\d+)x\d+x(bf16|f16|f32)>"
    return {(int(m.group(1)), m.group(2)) for m in re.finditer(operand, text)}


def _rows_of_products(step, variables) -> set[int]:
    return {rows for rows, _ in _products(step, variables)}


def _copies(prepared, collection=OUT_MAJOR) -> dict[tuple, jax.Array]:
    assert set(prepared) == {"params", collection}
    return traverse_util.flatten_dict(prepared[collection])


@pytest.mark.parametrize("dtype, rows, flags, widened", [
    ("bfloat16", 1, NO_AMX, True), ("bfloat16", 3, frozenset(), True), ("float16", 1, AMX, True),
    ("bfloat16", 1, AMX, False), ("bfloat16", 4, NO_AMX, False), ("float32", 1, NO_AMX, False)])
def test_few_16_bit_rows_are_widened_on_a_cpu_without_amx(dtype, rows, flags, widened, monkeypatch, no_native):
    monkeypatch.setattr(few_rows, "cpu_flags", lambda: flags)
    assert few_rows.widened(dtype, rows) is widened


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n"
                       "bugs\t\t: spectre_v1\n\nprocessor\t: 1\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert few_rows.cpu_flags(str(cpuinfo)) == {"fpu", "avx512f", "amx_bf16", "amx_tile"}
    assert few_rows.cpu_flags(str(tmp_path / "none")) == frozenset()  # no /proc (macOS): no AMX assumed


@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_bfloat16_one_token_step_pads_its_products_and_keeps_its_logits(family, monkeypatch, no_native):
    monkeypatch.setattr(few_rows, "cpu_flags", lambda: AMX)
    step, prepared = _one_token_step(family, "bfloat16")
    assert min(_rows_of_products(step, prepared)) >= few_rows.MIN_ROWS
    assert {path[-1] for path in _copies(prepared)} == {"kernel"}  # the tables are the parameters' own
    padded = step(prepared)

    monkeypatch.setattr(few_rows, "extra", lambda *args: 0)
    step, _ = _one_token_step(family, "bfloat16")
    assert min(_rows_of_products(step, prepared)) == 1
    np.testing.assert_allclose(padded, step(prepared), atol=2e-2, rtol=2e-2)  # bfloat16 results, summed otherwise


@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_bfloat16_step_without_amx_multiplies_float32_copies_of_its_weights_and_keeps_its_logits(
        family, monkeypatch, no_native):
    monkeypatch.setattr(few_rows, "cpu_flags", lambda: NO_AMX)
    step, prepared = _one_token_step(family, "bfloat16")
    copies = _copies(prepared, WIDENED)
    params = traverse_util.flatten_dict(nn.unbox(prepared["params"]))
    for path, copy_FxI in copies.items():
        assert copy_FxI.dtype == jnp.float32
        own = params[path]  # in bfloat16: the copy holds its values exactly
        np.testing.assert_array_equal(copy_FxI.T.reshape(own.shape) if path[-1] == "kernel" else copy_FxI,
                                      own.astype(jnp.float32))
    tables = {"gpt2": [("wte", "embedding")], "llama": [("embed_tokens", "embedding"), ("lm_head", "kernel")],
              "t5": [("shared", "embedding")]}
    assert all(table in copies for table in tables[family])
    products = _products(step, prepared)
    assert (1, "f32") in products and all(rows >= few_rows.MIN_ROWS for rows, kind in products if kind == "bf16")
    # tokens are looked up in the float32 table: from a 16-bit one XLA:CPU converts all of it first
    assert not re.search(r"= f32\[97,32\]\{1,0\} (convert|fusion)\(", step.lower(prepared).compile().as_text())
    widened = step(prepared)

    monkeypatch.setattr(few_rows, "cpu_flags", lambda: AMX)
    step, padded_form = _one_token_step(family, "bfloat16")
    np.testing.assert_allclose(widened, step(padded_form), atol=2e-2, rtol=2e-2)  # summed in another order


def test_a_float32_step_is_not_padded_or_widened(monkeypatch):
    monkeypatch.setattr(few_rows, "cpu_flags", lambda: NO_AMX)
    step, prepared = _one_token_step("gpt2", "float32")
    assert min(_rows_of_products(step, prepared)) == 1
    assert {path[-1] for path in _copies(prepared)} == {"kernel"}


@pytest.mark.parametrize("dtype, rows, devices, flags, dots, native", [
    ("bfloat16", 1, 1, NO_AMX, False, True), ("bfloat16", 3, 1, AMX, False, True),
    ("bfloat16", 4, 1, NO_AMX, False, False), ("bfloat16", 4, 1, NO_AMX, True, True),
    ("bfloat16", 32, 1, NO_AMX, True, True), ("bfloat16", 32, 1, AMX | NO_AMX, True, False),
    ("float16", 1, 1, NO_AMX, True, False), ("float32", 32, 1, NO_AMX, True, False),
    ("bfloat16", 1, 2, NO_AMX, True, False), ("bfloat16", 32, 2, NO_AMX, True, False)])
@needs_kernel
def test_bfloat16_rows_run_as_a_native_kernel_on_one_device(dtype, rows, devices, flags, dots, native,
                                                            monkeypatch):
    """A few rows where the kernels are built; more where the many-row product is (AVX512-BF16) and
    the CPU has no AMX."""
    monkeypatch.setattr(few_rows, "cpu_flags", lambda: flags)
    monkeypatch.setattr(bf16_kernels, "has_avx512_bf16", lambda: dots)
    mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices])
    with jax.set_mesh(mesh):  # XLA cannot split the kernel's call over the devices of a mesh
        assert few_rows.native(dtype, rows) is native
        assert not few_rows.widened(dtype, rows) or not native


def test_without_the_kernel_nothing_is_native(no_native, monkeypatch):
    monkeypatch.setattr(few_rows, "cpu_flags", lambda: NO_AMX)
    assert not few_rows.native("bfloat16", 1) and few_rows.widened("bfloat16", 1)


@needs_kernel
@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_bfloat16_step_runs_the_native_kernel_on_its_16_bit_weights_and_keeps_its_logits(
        family, monkeypatch):
    step, prepared = _one_token_step(family, "bfloat16")
    assert {path[-1] for path in _copies(prepared)} == {"kernel"}  # no float32 copies: the kernel reads bf16
    lowered = step.lower(prepared)
    text = lowered.as_text()
    calls = len(re.findall(rf"custom_call @{bf16_kernels.TARGET}", text))
    assert calls >= 2 * 4 + 1  # at least 4 projections in each of the 2 layers, and the head
    assert all(rows >= few_rows.MIN_ROWS for rows, kind in _products(step, prepared) if kind == "bf16")
    # tokens are looked up by the kernel too: from a 16-bit table XLA:CPU converts or copies all of it first
    assert f"custom_call @{bf16_kernels.TAKE_TARGET}" in text
    assert not re.search(r"= (f32|u16)\[97,32\]\{1,0\} (convert|fusion|bitcast-convert)\(", lowered.compile().as_text())
    native = step(prepared)

    monkeypatch.setattr(bf16_kernels, "available", lambda: False)
    monkeypatch.setattr(few_rows, "cpu_flags", lambda: NO_AMX)
    step, widened_form = _one_token_step(family, "bfloat16")
    # every product the widened form makes of one float32 row, the native one makes as a call
    assert calls == len(re.findall(r"dot_general.*?: \(tensor<1x\d+xf32>", step.lower(widened_form).as_text()))
    np.testing.assert_allclose(native, step(widened_form), atol=2e-2, rtol=2e-2)  # summed in another order


@pytest.mark.skipif(not bf16_kernels.has_avx512_bf16(), reason="the CPU has no AVX512-BF16")
@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_bfloat16_step_of_many_rows_runs_the_dot_kernel_and_keeps_its_logits(family, monkeypatch):
    monkeypatch.setattr(few_rows, "cpu_flags", lambda: NO_AMX)
    step, prepared = _one_token_step(family, "bfloat16", batch=5)
    text = step.lower(prepared).as_text()
    calls = len(re.findall(rf"custom_call @{bf16_kernels.DOTS_TARGET}", text))
    assert calls >= 2 * 4 + 1 and f"custom_call @{bf16_kernels.TARGET}" not in text
    native = step(prepared)

    monkeypatch.setattr(bf16_kernels, "has_avx512_bf16", lambda: False)
    step, _ = _one_token_step(family, "bfloat16", batch=5)
    # every product of rows by a 16-bit weight XLA makes (t5's encoder too), the native form makes as a call
    matrix_products = r"dot_general.*?: \(tensor<\d+x\d+xbf16>, tensor<\d+x\d+xbf16>"
    assert calls == len(re.findall(matrix_products, step.lower(prepared).as_text()))
    np.testing.assert_allclose(native, step(prepared), atol=2e-2, rtol=2e-2)  # summed in another order


@pytest.mark.skipif(not bf16_kernels.has_avx512_bf16(), reason="the CPU has no AVX512-BF16")
def test_training_keeps_xla_products_for_many_rows():
    """Only decoding (a call with a cache) takes the dot kernel: a training forward's tied head keeps XLA's product."""
    model = MODELS["gpt2"]("bfloat16")
    ids_4x5 = jnp.arange(20).reshape(4, 5)
    params = model.init(jax.random.PRNGKey(0), ids_4x5)["params"]
    text = jax.jit(lambda p: model.apply({"params": p}, ids_4x5)).lower(params).as_text()
    assert bf16_kernels.DOTS_TARGET not in text


needs_avx512_bf16 = pytest.mark.skipif(not bf16_kernels.has_avx512_bf16(), reason="the CPU has no AVX512-BF16")


@needs_avx512_bf16
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_bfloat16_steps_attention_runs_as_the_native_kernel_and_keeps_its_logits(family, batch, monkeypatch):
    """Over gpt2's heads, llama's grouped keys, t5's bias and its cross-attention."""
    step, prepared = _one_token_step(family, "bfloat16", batch)
    text = step.lower(prepared).as_text()
    assert len(re.findall(rf"custom_call @{bf16_kernels.ATTEND_TARGET}", text)) == (4 if family == "t5" else 2)
    native = step(prepared)

    monkeypatch.setattr(few_rows, "attends_natively", lambda *args: False)
    step, _ = _one_token_step(family, "bfloat16", batch)
    assert bf16_kernels.ATTEND_TARGET not in step.lower(prepared).as_text()
    np.testing.assert_allclose(native, step(prepared), atol=2e-2, rtol=2e-2)  # summed in another order


@needs_avx512_bf16
def test_native_attentions_gradient_is_the_xla_forms(monkeypatch):
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    q_BxTxNxH = jax.random.normal(keys[0], (2, 1, 4, 16)).astype(jnp.bfloat16)
    k, v = (jax.random.normal(key, (2 * 4, 9, 16)).astype(jnp.bfloat16) for key in keys[1:])  # a cache's layout

    def attend(q, k, v):
        o = attention.dot_product_attention(q, k, v, causal=True, query_offset=6, kv_cache_layout=True,
                                            implementation="explicit")
        return jnp.sum(o.astype(jnp.float32) * jnp.arange(16.0))
    native = jax.value_and_grad(attend, argnums=(0, 1, 2))(q_BxTxNxH, k, v)
    assert bf16_kernels.ATTEND_TARGET in jax.jit(attend).lower(q_BxTxNxH, k, v).as_text()
    monkeypatch.setattr(few_rows, "attends_natively", lambda *args: False)
    xla = jax.value_and_grad(attend, argnums=(0, 1, 2))(q_BxTxNxH, k, v)
    np.testing.assert_allclose(native[0], xla[0], rtol=1e-2)
    for ours, theirs in zip(native[1], xla[1]):
        np.testing.assert_allclose(ours.astype(np.float32), theirs.astype(np.float32), rtol=1e-2, atol=1e-2)
