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
def test_scanned_layers_give_the_same_gradients_unrolled_as_rolled(family, monkeypatch):
    """The CPU backend unrolls the scan over layers, the others keep one loop: the stacked
    parameters and the gradients are the same either way."""
    from flax_lm import backends
    from flax_lm.models import bert
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(**{**CFG.__dict__, "scan_layers": True}))
    else:
        model = bert.BertForMaskedLM(bert.BertConfig(vocab_size=97, max_len=24, d_model=32, n_layers=3, n_heads=4,
                                                     d_ff=48, scan_layers=True))
    ids = np.zeros((2, 8), np.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), ids)["params"])
    layers = params["h"] if family == "gpt2" else params["bert"]["layers"]
    assert {x.shape[0] for x in jax.tree.leaves(layers)} == {3}  # stacked
    grads = {}
    for platform in ("cpu", "tpu"):
        monkeypatch.setattr(backends, "platform", lambda: platform)
        grads[platform] = jax.jit(jax.grad(lambda p: jnp.mean(model.apply({"params": p}, ids) ** 2)))(params)
    assert backends.for_platform("cpu").scan_unroll(3) == 3 and backends.for_platform("tpu").scan_unroll(3) == 1
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads["cpu"], grads["tpu"])


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


