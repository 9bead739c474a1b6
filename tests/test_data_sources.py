"""Data sources behind one config string: TFDS by name (a real data set built here by a TFDS
builder from the shared Tiny Shakespeare), Hugging Face `datasets` (data files and directories
written by `save_to_disk`, offline), JSON lines, CSV, Parquet and text files. Reading is sharded
per process, disjoint and complete; every source resumes mid-epoch exactly."""

import json
import os
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



@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A TFDS data directory holding `shakespeare_speeches`, prepared by its builder package."""
    global tfds
    tfds = pytest.importorskip("tensorflow_datasets")
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


# Hugging Face `datasets`: what it reads with no network (data files, directories of them, save_to_disk)


def _hf_env(tmp_path) -> dict:
    """The environment of a `flax-lm` process that reads `hf:` sources offline, its cache in `tmp_path`."""
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(tmp_path / "hf_cache")}


@pytest.fixture
def hf_datasets(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="datasets is not installed (pip install flax_lm[hf])")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    return datasets


def _speeches(count: int) -> list[str]:
    """The first `count` blank-line separated speeches of Tiny Shakespeare."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"shared data not found at {SHAKESPEARE}")
    return [s for s in SHAKESPEARE.read_text().split("\n\n") if s.strip()][:count]


def test_hf_data_files_and_saved_datasets_read_as_the_files_do(tmp_path, hf_datasets):
    speeches = _speeches(300)
    jsonl = _write_jsonl(tmp_path / "speeches.jsonl", speeches)
    hf_datasets.Dataset.from_dict({"text": speeches}).to_parquet(tmp_path / "speeches.parquet")
    hf_datasets.DatasetDict(train=hf_datasets.Dataset.from_dict({"text": speeches[:200]}),
                            validation=hf_datasets.Dataset.from_dict({"text": speeches[200:]})).save_to_disk(
        tmp_path / "saved")
    files = corpus.read_documents(str(jsonl))
    assert files == speeches
    assert corpus.read_documents(f"hf:{jsonl}") == files
    assert corpus.read_documents(f"hf:{tmp_path}/*.parquet") == files
    assert corpus.read_documents(f"hf:{tmp_path / 'saved'}") == speeches[:200]
    assert corpus.read_documents(f"hf:{tmp_path / 'saved'}:validation") == speeches[200:]
    # per-process shards: contiguous, disjoint, and sorted by key together the whole split
    shards = [corpus.read_shard(f"hf:{jsonl}", shard=(i, 3)) for i in range(3)]
    assert [len(s) for s in shards] == [100, 100, 100]
    assert corpus.cap([d for s in shards for d in s], 0) == files
    # text pairs (seq2seq) from the columns of a split
    from flax_lm.data import seq2seq_data
    pairs = hf_datasets.Dataset.from_dict({"en": speeches[:5], "de": speeches[5:10]})
    hf_datasets.DatasetDict(train=pairs).save_to_disk(tmp_path / "pairs")
    read = seq2seq_data.read_pairs(f"hf:{tmp_path / 'pairs'}:train", "en", "de")
    assert read.sources == speeches[:5] and read.targets == speeches[5:10] and read.lines == [1, 2, 3, 4, 5]


def test_hf_sources_train_a_causal_lm_and_a_classifier_offline(tmp_path, hf_datasets):
    speeches = _speeches(200)
    hf_datasets.Dataset.from_dict({"text": speeches}).to_parquet(tmp_path / "speeches.parquet")
    lm = subprocess.run([sys.executable, "-m", "flax_lm.cli", "train", *_TINY_LM, "--config.train.steps=3",
                         f"--config.data.source=hf:{tmp_path / 'speeches.parquet'}", "--workdir", str(tmp_path / "lm")],
                        capture_output=True, text=True, timeout=300, env=_hf_env(tmp_path))
    assert lm.returncode == 0, lm.stderr
    assert json.loads((tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3

    # a classification data set as the hub serves them: splits of one DatasetDict, labels a ClassLabel
    features = hf_datasets.Features({"sentence": hf_datasets.Value("string"),
                                     "label": hf_datasets.ClassLabel(names=["calm", "angry"])})
    rows = {"sentence": speeches, "label": [int("!" in s) for s in speeches]}
    splits = hf_datasets.Dataset.from_dict(rows, features=features)
    hf_datasets.DatasetDict(train=splits.select(range(160)), validation=splits.select(range(160, 200))).save_to_disk(
        tmp_path / "moods")
    work = tmp_path / "classifier"
    done = subprocess.run([sys.executable, "-m", "flax_lm.cli", "train", "--config", "sst2", *_TINY_BERT,
                           f"--config.data.train=hf:{tmp_path / 'moods'}:train",
                           f"--config.data.validation=hf:{tmp_path / 'moods'}:validation", "--config.data.test=",
                           "--config.train.steps=3", "--workdir", str(work)],
                          capture_output=True, text=True, timeout=300, env=_hf_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert json.loads((work / "labels.json").read_text())["names"] == ["angry", "calm"]
    evaluated = json.loads((work / "metrics.jsonl").read_text().splitlines()[-1])
    assert evaluated["eval/examples"] == 40 and evaluated["eval/support/angry"] == sum(rows["label"][160:])


_TINY_LM = ["--config", "gpt2_tiny", "--config.model.d_model=32", "--config.model.n_layers=1",
            "--config.model.n_heads=2", "--config.model.vocab_size=300", "--config.model.max_len=16",
            "--config.train.batch_size=8", "--config.train.progress_bar=false", "--config.optim.warmup_steps=1",
            "--config.train.eval_every=3", "--config.train.eval_batches=1", "--config.sample.max_new_tokens=0"]
_TINY_BERT = ["--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
              "--config.model.d_ff=64", "--config.model.vocab_size=400", "--config.train.batch_size=8",
              "--config.train.progress_bar=false", "--config.optim.warmup_steps=1", "--config.train.eval_every=3"]


@pytest.mark.parametrize("source, message", [
    ("hf:SAVED:test", "hf:SAVED: has no split 'test'; it has train, validation"),
    ("hf:ONE:train", "hf:ONE: is one saved Dataset, not a DatasetDict of splits; leave :train off"),
    ("hf:FILE:validation", "Unknown split \"validation\""),
    ("hf:DIR/*.parquet", "hf:DIR/*.parquet: no file matches it"),
    ("hf:FILE", None),
    ("hf:", "give a data set name or path"),
])
def test_bad_hf_sources_are_one_line(tmp_path, hf_datasets, source, message):
    (tmp_path / "dir").mkdir()
    hf_datasets.Dataset.from_dict({"text": ["one", "two"]}).save_to_disk(tmp_path / "one")
    hf_datasets.DatasetDict(train=hf_datasets.Dataset.from_dict({"text": ["a"]}),
                            validation=hf_datasets.Dataset.from_dict({"text": ["b"]})).save_to_disk(tmp_path / "saved")
    _write_jsonl(tmp_path / "texts.jsonl", ["first", "second"])
    paths = {"SAVED": tmp_path / "saved", "ONE": tmp_path / "one", "FILE": tmp_path / "texts.jsonl",
             "DIR": tmp_path / "dir"}
    for name, path in paths.items():
        source, message = source.replace(name, str(path)), message and message.replace(name, str(path))
    if message is None:   # the file reads; a field it does not have is named with those it has
        with pytest.raises(UserError, match=r"the records have no field 'body'; their fields are \['id', 'text'\]"):
            corpus.read_documents(source, document_field="body")
        return
    with pytest.raises(UserError) as error:
        corpus.read_documents(source)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_unknown_hf_name_offline_and_a_missing_datasets_package_on_the_command_line(tmp_path):
    pytest.importorskip("datasets")
    args = ["train", *_TINY_LM, "--workdir", str(tmp_path / "run"), "--config.data.source=hf:no_such_data_set_x"]
    unknown = subprocess.run([sys.executable, "-m", "flax_lm.cli", *args], capture_output=True, text=True,
                             timeout=300, env=_hf_env(tmp_path))
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1, unknown.stderr
    assert "hf:no_such_data_set_x: could not be loaded (" in unknown.stderr
    assert "a hub name needs a network or the data set in the local datasets cache" in unknown.stderr
    # without the package (an import of it fails as where it is not installed)
    main = "import sys; sys.modules['datasets'] = None; from flax_lm.cli import main; sys.exit(main())"
    missing = subprocess.run([sys.executable, "-c", main, *args], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert "hf: sources need the datasets package: pip install 'flax_lm[hf]'" in missing.stderr
    assert not (tmp_path / "run").exists()
