"""Token stores (`flax-lm prepare`, `data.source=tokens:DIR`): the stream a run would build
in memory, written once and read lazily; parts written separately; training from a store
equal to training from the text; bad stores refused with one line."""

import numpy as np
import pytest
from conftest import tiny_config

from flax_lm import cli
from flax_lm.training import train
from flax_lm.data import pipeline, token_store
from flax_lm.errors import UserError
from flax_lm.workdir.prepare import prepare


def _store_config(cfg, out):
    stored = cfg.copy_and_resolve_references()
    stored.data.source, stored.data.max_bytes = f"tokens:{out}", 0
    return stored


def _prepared(cfg, workdir):
    workdir.mkdir()
    return pipeline.prepare(cfg, workdir)


def _all_batches(dataset):
    return dataset.batch(np.arange(len(dataset)))


@pytest.mark.parametrize("task", ["causal_lm", "span_corruption"])
def test_a_store_gives_the_splits_a_run_builds_in_memory(tmp_path, shakespeare, task):
    cfg = tiny_config(data=dict(max_bytes=60_000, packing="segments"))
    if task == "span_corruption":
        cfg.task, cfg.model.family = "span_corruption", "t5"
        cfg.model.update(vocab_size=600, n_heads=4, d_model=64)
    counts = prepare(cfg, tmp_path / "store")
    text = _prepared(cfg, tmp_path / "text")
    stored = _prepared(_store_config(cfg, tmp_path / "store"), tmp_path / "stored")
    assert stored.tokenizer.to_str() == text.tokenizer.to_str()
    assert (tmp_path / "stored" / "tokenizer.json").is_file()
    for split in ("train", "validation"):
        a, b = _all_batches(text.splits[split]), _all_batches(stored.splits[split])
        assert len(text.splits[split]) == len(stored.splits[split]) > 0
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    store = token_store.Store(f"tokens:{tmp_path / 'store'}")
    assert len(store.stream) == counts["tokens"] and isinstance(store.stream.parts[0], np.memmap)
    assert store.stream.parts[0].dtype == np.uint16   # a vocabulary under 65,536 takes two bytes a token


def test_training_from_a_store_equals_training_from_the_text(tmp_path, shakespeare):
    cfg = tiny_config(train=dict(steps=6, eval_every=6, checkpoint_every=6), data=dict(max_bytes=60_000))
    prepare(cfg, tmp_path / "store")
    from_text = train.train(cfg, tmp_path / "text")
    from_store = train.train(_store_config(cfg, tmp_path / "store"), tmp_path / "stored")
    assert from_text == from_store and np.isfinite(from_text["loss"])


def test_parts_written_apart_hold_the_whole_corpus_once(tmp_path):
    texts = [f"document {i} says " + "word " * (i % 5 + 1) + "and ends." for i in range(11)]
    for i, text in enumerate(texts):
        (tmp_path / f"{i:02d}.txt").write_text(text)
    cfg = tiny_config(data=dict(source=f"{tmp_path}/*.txt", max_bytes=0))
    whole = prepare(cfg, tmp_path / "whole")
    for part in (2, 0):
        prepare(cfg, tmp_path / "parts", part, 3)
    with pytest.raises(UserError, match=r"1 of 3 parts are not finished \(part 1\)"):
        token_store.Store(f"tokens:{tmp_path / 'parts'}")
    prepare(cfg, tmp_path / "parts", 1, 3)
    one, three = (token_store.Store(f"tokens:{tmp_path / name}") for name in ("whole", "parts"))
    assert len(three.stream.parts) == 3 and len(three.stream) == len(one.stream) == whole["tokens"]

    def documents(store):
        ids = store.stream[:]
        ends = np.flatnonzero(ids == store.eos)
        return sorted(tuple(d) for d in np.split(ids, ends + 1) if len(d))
    assert documents(three) == documents(one) and len(documents(one)) == len(texts)


def test_a_token_stream_reads_like_the_concatenated_array():
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 60_000, n).astype(np.uint16) for n in (7, 0, 13, 1, 9)]
    whole = np.concatenate(parts).astype(np.int32)
    stream = token_store.TokenStream(parts)
    index = rng.integers(0, len(whole), (4, 6))
    np.testing.assert_array_equal(stream[index], whole[index])
    assert stream[index].dtype == np.int32
    np.testing.assert_array_equal(stream[3:25], whole[3:25])
    view = stream.view(5, 22)
    assert len(view) == 17
    np.testing.assert_array_equal(view[:], whole[5:22])
    np.testing.assert_array_equal(view[np.array([0, 16])], whole[[5, 21]])
    with pytest.raises(IndexError):
        view[np.array([17])]


def test_bad_stores_are_one_line(tmp_path, shakespeare):
    cfg = tiny_config(data=dict(max_bytes=30_000))
    out = tmp_path / "store"
    with pytest.raises(UserError, match="is not a token store .*flax-lm prepare"):
        _prepared(_store_config(cfg, out), tmp_path / "w0")
    prepare(cfg, out)
    # the same settings again rewrite the same part; other settings are refused, and the store stays readable
    same = cfg.copy_and_resolve_references()
    same.data.tokenizer = str(out / "tokenizer.json")
    prepare(same, out)
    same.data.max_bytes = 0   # a part of several cannot cap the whole
    with pytest.raises(UserError, match=r"store.json: was written for other settings \(parts 1, now 2\)"):
        prepare(same, out, 0, 2)
    bigger = cfg.copy_and_resolve_references()
    bigger.model.vocab_size = 600
    (tmp_path / "other").mkdir()
    prepare(bigger, tmp_path / "other")
    bigger.data.tokenizer = str(tmp_path / "other" / "tokenizer.json")
    with pytest.raises(UserError, match="holds parts made with another tokenizer than data.tokenizer"):
        prepare(bigger, out)
    token_store.Store(f"tokens:{out}")
    stored = _store_config(cfg, out)
    masked = stored.copy_and_resolve_references()
    masked.task, masked.model.family = "masked_lm", "bert"
    with pytest.raises(UserError, match="a token store serves causal_lm and span_corruption"):
        _prepared(masked, tmp_path / "w1")
    capped = stored.copy_and_resolve_references()
    capped.data.max_bytes = 100
    with pytest.raises(UserError, match="data.max_bytes"):
        _prepared(capped, tmp_path / "w2")
    # a workdir that began with another tokenizer does not switch to the store's
    (tmp_path / "w3").mkdir()
    (tmp_path / "w3" / "tokenizer.json").write_text((tmp_path / "other" / "tokenizer.json").read_text())
    with pytest.raises(UserError, match="a run keeps the tokenizer it started with"):
        pipeline.prepare(stored, tmp_path / "w3")
    # a part cut short (a copy that stopped) is named, with what to do
    part = out / "tokens-00000-of-00001.bin"
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(UserError, match="holds 100 bytes.*prepare that part again"):
        token_store.Store(f"tokens:{out}")


def test_prepare_on_the_command_line(tmp_path, shakespeare, capsys):
    args = ["prepare", "--config", "gpt2_tiny", "--out", str(tmp_path / "s"), f"--config.data.source={shakespeare}",
            "--config.data.max_bytes=20000"]
    assert cli.main(args) == 0
    assert "tokens/s); train with --config.data.source=tokens:" in capsys.readouterr().out
    assert cli.main(args[:-2] + [f"--config.data.source=tokens:{tmp_path / 's'}"]) == 2
    assert cli.main(args + ["--part", "3", "--parts", "2"]) == 2
    assert cli.main(args + ["--config.task=classification"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "is a token store already" in errors[0] and "--part 3 --parts 2" in errors[1]
