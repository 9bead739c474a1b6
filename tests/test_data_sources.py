"""Data sources behind one config string: TFDS by name (a real data set built here by a TFDS
builder from the shared Tiny Shakespeare), JSON lines, CSV, Parquet and text files. Reading
is sharded per process, disjoint and complete; every source resumes mid-epoch exactly."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import SHAKESPEARE, SHARED_DATA, tiny_config

from flax_lm.config import load as config_lib
from flax_lm.training import train
from flax_lm.data import corpus, length_buckets, lm_data, packing_stats, pipeline, token_store
from flax_lm.errors import UserError
from flax_lm.workdir.prepare import prepare

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A TFDS data directory holding `shakespeare_speeches`, prepared by its builder package."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"shared data not found at {SHAKESPEARE}")
    from tfds_builders.shakespeare_speeches import shakespeare_speeches_dataset_builder as module
    data_dir = tmp_path_factory.mktemp("tfds")
    module.Builder(data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(SHAKESPEARE.parent)))
    return str(data_dir)


def _write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def test_tfds_name_trains_gpt2_tiny(tmp_path, tfds_dir, capsys):
    cfg = config_lib.load("gpt2_tiny", [
        "--config.data.source=tfds:shakespeare_speeches", f"--config.data.tfds_data_dir={tfds_dir}",
        "--config.data.tfds_download=False", "--config.data.packing=segments", "--config.model.vocab_size=512",
        "--config.train.steps=6", "--config.optim.warmup_steps=2", "--config.train.batch_size=8",
        "--config.train.eval_every=6", "--config.train.eval_batches=1", "--config.train.progress_bar=False",
        "--config.sample.max_new_tokens=0"])
    metrics = train.train(cfg, tmp_path)
    assert np.isfinite(metrics["loss"]) and metrics["loss"] < 6.3  # ln(512) = 6.24 untrained
    # speeches are short: a 128-token window holds several, all kept apart by segment ids
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("data: "))
    assert "0.0% padding" in line and "documents per sequence" in line
    assert float(line.split(", ")[-1].split()[0]) > 2


def test_a_tfds_source_tokenized_into_a_store_streams_as_read_in_memory(tmp_path, tfds_dir):
    cfg = tiny_config(data=dict(source="tfds:shakespeare_speeches", tfds_data_dir=tfds_dir, max_bytes=50_000))
    counts = prepare(cfg, tmp_path / "store")
    store = token_store.Store(f"tokens:{tmp_path / 'store'}")
    documents = corpus.read_documents(cfg.data.source, cfg.data.max_bytes, tfds_data_dir=tfds_dir)
    expected = lm_data.encode_documents(documents, store.tokenizer, store.eos)
    assert counts["documents"] == len(documents) > 100
    np.testing.assert_array_equal(store.stream[:], expected)


def test_tfds_records_come_in_prepared_order_with_even_shards(tfds_dir):
    whole = corpus.read_shard("tfds:shakespeare_speeches", tfds_data_dir=tfds_dir)
    shards = [corpus.read_shard("tfds:shakespeare_speeches", tfds_data_dir=tfds_dir, shard=(i, 2)) for i in (0, 1)]
    assert len(shards[0]) + len(shards[1]) == len(whole) == _num_examples(tfds_dir, "train")
    assert corpus.cap(shards[1] + shards[0], 0) == [d.text for d in whole]
    # a TFDS split's slice, and the validation split by name
    assert len(corpus.read_documents("tfds:shakespeare_speeches:train[:10]", tfds_data_dir=tfds_dir)) == 10
    validation = corpus.read_documents("tfds:shakespeare_speeches:validation", tfds_data_dir=tfds_dir)
    assert len(validation) == _num_examples(tfds_dir, "validation") > 500


def _num_examples(data_dir, split):
    return tfds.builder("shakespeare_speeches", data_dir=data_dir).info.splits[split].num_examples


@pytest.mark.parametrize("layout", ["files", "one_jsonl", "one_parquet"])
def test_two_hosts_read_disjoint_shards_whose_union_is_the_source(tmp_path, layout):
    texts = [f"document {i}: " + "word " * (i % 7 + 1) for i in range(23)]
    if layout == "files":
        for i, text in enumerate(texts):
            (tmp_path / f"{i:02d}.txt").write_text(text)
        source = f"{tmp_path}/*.txt"
    elif layout == "one_jsonl":
        source = str(_write_jsonl(tmp_path / "docs.jsonl", texts))
    else:
        import pyarrow
        import pyarrow.parquet
        pyarrow.parquet.write_table(pyarrow.table({"text": texts, "n": list(range(23))}), tmp_path / "docs.parquet")
        source = str(tmp_path / "docs.parquet")
    shards = [corpus.read_shard(source, shard=(i, 2)) for i in (0, 1)]
    keys = [{d.key for d in s} for s in shards]
    assert not keys[0] & keys[1] and len(shards[0]) + len(shards[1]) == 23
    assert corpus.cap(shards[0] + shards[1], 0) == corpus.read_documents(source) == texts
    # capped shards, gathered and cut, are the capped whole source
    capped = [corpus.read_shard(source, 200, shard=(i, 2)) for i in (0, 1)]
    assert corpus.cap(capped[0] + capped[1], 200) == corpus.read_documents(source, 200)


def _sst2_config():
    """SST-2's dev split as a small classification task (a WordPiece vocabulary trained on it)."""
    cfg = tiny_config()
    cfg.task, cfg.model.family = "classification", "bert"
    dev = str(SHARED_DATA / "sst2" / "dev.tsv")
    cfg.data.update(train=dev, validation=dev)
    config_lib.validate(cfg)
    return cfg


def _batches(dataset, iterator, n):
    out = []
    for _ in range(n):
        indices = iterator.next_global_indices()
        out.append(length_buckets.load_batch(dataset, iterator.local(indices), iterator.epoch, indices))
    return out


@pytest.mark.parametrize("source", ["text", "tsv_classification", "tfds", "token_store"])
def test_batches_after_a_restore_mid_epoch_are_those_of_an_uninterrupted_run(tmp_path, source, tfds_dir):
    if source == "text":
        cfg = tiny_config(data=dict(packing="segments"))
    elif source == "token_store":
        prepare(tiny_config(data=dict(max_bytes=100_000)), tmp_path / "store")
        cfg = tiny_config(data=dict(source=f"tokens:{tmp_path / 'store'}", max_bytes=0, packing="segments"))
    elif source == "tfds":
        cfg = tiny_config(data=dict(source="tfds:shakespeare_speeches", tfds_data_dir=tfds_dir, max_bytes=100_000))
    else:
        cfg = _sst2_config()
    dataset = pipeline.prepare(cfg, tmp_path).splits["train"]
    padding = length_buckets.padding_of(dataset)

    def iterator():
        return lm_data.BatchIterator(len(dataset), 16, seed=3, lengths=None if padding is None else padding.lengths)

    steps = 2 * iterator().batches_per_epoch + 3  # into the third epoch
    uninterrupted = _batches(dataset, iterator(), steps)
    first = iterator()
    _batches(dataset, first, steps // 2 + 1)  # stop mid-epoch; a new process restores the position
    resumed = iterator()
    resumed.restore(json.loads(json.dumps(first.state())))
    for a, b in zip(uninterrupted[steps // 2 + 1:], _batches(dataset, resumed, steps - steps // 2 - 1)):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_packing_statistics(tmp_path):
    docs = ["a b c d e f g h " * 3, "x y " * 2, "one two three " * 5] * 20
    source = _write_jsonl(tmp_path / "docs.jsonl", docs)
    cfg = tiny_config(data=dict(source=str(source), packing="segments", validation_fraction=0.1))
    windows = pipeline.prepare(cfg, tmp_path).splits["train"]
    s = packing_stats.stats(windows)
    assert s["padding_fraction"] == 0.0
    starts = sum(int((windows.batch(np.array([i]))["positions"] == 0).sum()) for i in range(len(windows)))
    assert s["documents_per_sequence"] == pytest.approx(starts / len(windows))
    (tmp_path / "sst2").mkdir()
    sst2 = pipeline.prepare(_sst2_config(), tmp_path / "sst2").splits["train"]
    line = packing_stats.describe(sst2, 32, dynamic=True)
    assert line.startswith("data: 872 training sequences of 32 tokens") and "% padding at full length" in line


def test_tfds_classification_split_with_class_names(tmp_path, tfds_dir):
    """A TFDS split as a classification file: here the speaker of a speech, as a string label."""
    from flax_lm.data import text_classification
    examples = text_classification.read_examples("tfds:shakespeare_speeches:validation", "text",
                                                 label_column="speaker", tfds_data_dir=tfds_dir)
    assert len(examples) == _num_examples(tfds_dir, "validation") and examples.labels[0] and examples.texts[0]
    with pytest.raises(UserError, match=r"has no column 'label'; its columns are \['text', 'speaker'\]"):
        text_classification.read_examples("tfds:shakespeare_speeches:validation", "text", tfds_data_dir=tfds_dir)


@pytest.mark.parametrize("source, message", [
    ("tfds:shakespeare_speechez", "no such TFDS data set (did you mean 'shakespeare_speeches'?)"),
    ("tfds:glue/sst2", "tfds:glue/sst2: is not prepared in"),
    ("tfds:shakespeare_speeches:test", "has no split 'test'; it has train, validation"),
    ("tfds:", "give a data set name"),
])
def test_bad_tfds_sources_are_one_line(tfds_dir, source, message):
    with pytest.raises(UserError) as error:
        corpus.read_documents(source, tfds_data_dir=tfds_dir, tfds_download=False)
    assert message in str(error.value) and "\n" not in str(error.value)
    if "no such" in message:
        assert "data.tfds_data_dir" in str(error.value)


def test_bad_record_files_are_one_line(tmp_path):
    good = _write_jsonl(tmp_path / "good.jsonl", ["first text", "second text"])
    broken = tmp_path / "broken.jsonl"
    broken.write_text(good.read_text() + '{"text": "unterminated\n')
    (tmp_path / "empty.jsonl").write_text("")
    cases = {
        str(broken): f"{broken}:3: not valid JSON",
        str(tmp_path / "empty.jsonl"): "has no rows",
    }
    for source, message in cases.items():
        with pytest.raises(UserError, match="^data.source: ") as error:
            corpus.read_documents(source)
        assert message in str(error.value)
    with pytest.raises(UserError, match="has no column 'body'; its columns are"):
        corpus.read_documents(str(good), document_field="body")


def test_an_unknown_tfds_name_on_the_command_line(tmp_path, tfds_dir):
    result = subprocess.run(
        [sys.executable, "-m", "flax_lm.cli", "train", "--config", "gpt2_tiny", "--workdir", str(tmp_path),
         "--config.data.source=tfds:no_such_data_set", f"--config.data.tfds_data_dir={tfds_dir}"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "tfds:no_such_data_set: no such TFDS data set" in last and tfds_dir in last
