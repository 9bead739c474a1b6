"""GPT-2 module: causality, layouts, dtypes, and equality with transformers.GPT2LMHeadModel."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_lm.models.gpt2 import GPT2Config, GPT2LMHeadModel, num_params

CFG = GPT2Config(vocab_size=97, max_len=24, d_model=32, n_layers=3, n_heads=4, d_ff=48)


def _init(cfg, seed=0):
    return GPT2LMHeadModel(cfg).init(jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32))["params"]


@pytest.mark.parametrize("scan_layers", [False, True])
def test_changing_token_t_never_changes_earlier_logits(scan_layers):
    cfg = GPT2Config(**{**CFG.__dict__, "scan_layers": scan_layers})
    model = GPT2LMHeadModel(cfg)
    params = nn.unbox(_init(cfg))
    ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 16))
    base = model.apply({"params": params}, ids)
    for t in (0, 7, 15):
        changed = ids.copy()
        changed[:, t] = (changed[:, t] + 1) % cfg.vocab_size
        out = model.apply({"params": params}, changed)
        np.testing.assert_array_equal(out[:, :t], base[:, :t])
        assert not np.allclose(out[:, t], base[:, t])


def test_every_parameter_has_logical_axes_matching_its_rank():
    boxed = _init(CFG)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    assert all(len(x.names) == x.value.ndim for x in leaves)
    assert sum(x.value.size for x in leaves) == num_params(CFG, include_positions=True)


def test_scanned_layers_compute_the_same_function():
    params = nn.unbox(_init(CFG))
    scanned_cfg = GPT2Config(**{**CFG.__dict__, "scan_layers": True})
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"h_{i}"] for i in range(CFG.n_layers)])
    scanned = {k: v for k, v in params.items() if not k.startswith("h_")} | {"h": stacked}
    ids = np.arange(20).reshape(2, 10)
    np.testing.assert_allclose(
        GPT2LMHeadModel(scanned_cfg).apply({"params": scanned}, ids),
        GPT2LMHeadModel(CFG).apply({"params": params}, ids), atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
@pytest.mark.parametrize("platform, loops", [("cpu", 0), ("tpu", 2)])
def test_scanned_layers_run_unrolled_on_a_cpu_with_their_stacked_parameters(family, platform, loops, monkeypatch):
    """On a CPU the scan's loop is unrolled (its bookkeeping cost bert_base's train step 14%);
    elsewhere the forward and backward passes stay one loop each."""
    from flax_lm import sharding
    from flax_lm.models import bert
    monkeypatch.setattr(sharding, "target_platform", lambda: platform)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(**{**CFG.__dict__, "scan_layers": True}))
    else:
        model = bert.BertForMaskedLM(bert.BertConfig(vocab_size=97, max_len=24, d_model=32, n_layers=3, n_heads=4,
                                                     d_ff=48, scan_layers=True))
    ids = np.zeros((2, 8), np.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), ids)["params"])
    layers = params["h"] if family == "gpt2" else params["bert"]["layers"]
    assert {x.shape[0] for x in jax.tree.leaves(layers)} == {3}  # stacked
    grad = jax.jit(jax.grad(lambda p: jnp.mean(model.apply({"params": p}, ids) ** 2)))
    assert grad.lower(params).as_text().count("stablehlo.while") == loops


@pytest.mark.parametrize("policy", ["full", "dots", "save_block_outputs"])
def test_remat_policies_keep_the_gradients(policy):
    params = nn.unbox(_init(CFG))
    ids = np.random.RandomState(1).randint(0, CFG.vocab_size, (2, 12))

    def loss(cfg):
        return jax.grad(lambda p: jnp.mean(GPT2LMHeadModel(cfg).apply({"params": p}, ids) ** 2))(params)

    remat_cfg = GPT2Config(**{**CFG.__dict__, "remat_policy": policy})
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), loss(remat_cfg), loss(CFG))


def test_bf16_compute_keeps_fp32_parameters():
    cfg = GPT2Config(**{**CFG.__dict__, "dtype": "bfloat16"})
    params = nn.unbox(_init(cfg))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    logits = GPT2LMHeadModel(cfg).apply({"params": params}, np.zeros((1, 8), np.int32))
    assert logits.dtype == jnp.bfloat16
    fp32 = GPT2LMHeadModel(CFG).apply({"params": params}, np.zeros((1, 8), np.int32))
    np.testing.assert_allclose(logits.astype(jnp.float32), fp32, atol=0.05)


def test_logits_equal_transformers_gpt2_with_padding():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from flax_lm.interop import gpt2 as interop

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        **interop.config_to_hf(CFG), bos_token_id=0, eos_token_id=0)).eval()
    state_dict = {k: v.numpy() for k, v in hf.state_dict().items()}
    params = interop.params_from_hf(state_dict, CFG)
    ids = np.random.RandomState(0).randint(0, CFG.vocab_size, (3, 13))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    ours = np.asarray(GPT2LMHeadModel(CFG).apply({"params": params}, ids, attention_mask_BxT=mask))
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(ours - ref)[real].max() <= 1e-5
    back = interop.params_to_hf(params, CFG)
    assert all(np.array_equal(back[k], state_dict[k]) for k in back)


def test_a_16_bit_embedding_looks_tokens_up_as_nn_embed_does_gradient_included():
    """`layers.Embed` moves a 16-bit table's rows as integers (XLA:CPU converts a whole 16-bit
    table to float32 to gather from it); the rows and the table's gradient are nn.Embed's."""
    from flax_lm.models.layers import Embed
    ids_BxT = jnp.asarray([[3, 1, 3, 0], [2, 2, 4, 1]])
    kwargs = dict(num_embeddings=5, features=8, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    params = nn.Embed(**kwargs).init(jax.random.PRNGKey(0), ids_BxT)
    weights_BxTxD = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 8))

    def loss(module):
        return lambda params: jnp.sum(module.apply(params, ids_BxT).astype(jnp.float32) * weights_BxTxD)
    ours, theirs = (jax.value_and_grad(loss(module))(params) for module in (Embed(**kwargs), nn.Embed(**kwargs)))
    assert ours[0] == theirs[0]
    ours_table, theirs_table = (grads["params"]["embedding"] for _, grads in (ours, theirs))
    assert ours_table.dtype == jnp.bfloat16 and np.any(np.asarray(ours_table, np.float32) != 0)
    np.testing.assert_array_equal(ours_table, theirs_table)
