"""One-token decoding in bfloat16 on CPU pads its products to four rows (`flax_lm.few_rows`),
and computes the same logits as without the padding."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_lm import few_rows
from flax_lm.generation import CausalDecoder, Seq2SeqDecoder
from flax_lm.models import gpt2, llama, t5

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


def _one_token_step(family: str, dtype: str):
    """(the jitted one-token decoding step of a tiny `family` model, its prepared variables)."""
    model = MODELS[family](dtype)
    ids_1x5 = jnp.asarray([[5, 17, 33, 2, 60]])
    if family == "t5":
        decoder = Seq2SeqDecoder(model)
        params = model.init(jax.random.PRNGKey(0), ids_1x5, ids_1x5[:, :2])["params"]
        context = (ids_1x5, jnp.ones((1, 5), bool))
    else:
        decoder, context = CausalDecoder(model), None
        params = model.init(jax.random.PRNGKey(0), ids_1x5)["params"]
    prepared = decoder.prepare(params)

    def step(variables):
        cache = decoder.start(variables, context, 1, 8)
        return decoder.forward(variables, ids_1x5[:, :1], jnp.ones((1, 8), bool), jnp.zeros((1, 1), jnp.int32),
                               cache, 0)[0].astype(jnp.float32)
    return jax.jit(step), prepared


def _rows_of_products(step, variables) -> set[int]:
    """The row counts (the dimension before the contracted last one) of the step's products."""
    text = step.lower(variables).as_text()
    return {int(m.group(1).split("x")[-2]) for m in re.finditer(r"dot_general.*?: \(tensor<([0-9x]+)x[bf]", text)}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_bfloat16_one_token_step_pads_its_products_and_keeps_its_logits(family, monkeypatch):
    step, prepared = _one_token_step(family, "bfloat16")
    assert min(_rows_of_products(step, prepared)) >= few_rows.MIN_ROWS
    padded = step(prepared)

    monkeypatch.setattr(few_rows, "extra", lambda *args: 0)
    step, _ = _one_token_step(family, "bfloat16")
    assert min(_rows_of_products(step, prepared)) == 1
    np.testing.assert_allclose(padded, step(prepared), atol=2e-2, rtol=2e-2)  # bfloat16 results, summed otherwise


def test_a_float32_step_is_not_padded():
    step, prepared = _one_token_step("gpt2", "float32")
    assert min(_rows_of_products(step, prepared)) == 1
