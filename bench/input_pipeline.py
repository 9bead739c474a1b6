"""Input pipeline throughput: read, tokenize, and pack + batch, for a text source and a TFDS source.

The accelerator asks for about 500K tokens/s when it trains gpt2_small on an H100; the
pipeline keeps ahead of it when batches come faster than that. Reading and tokenizing run
once when a run starts (the token stream then sits in memory); packing and batching run
every step, on the host, while the device computes the step before.

    python -m bench input [--batch 32] [--seq-len 1024] [--json FILE] [--no-record]
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import add_row, command_line, machine, publish
from flax_lm.data import corpus, length_buckets, lm_data, token_store
from flax_lm.data import tokenizer as tokenizer_lib

TABLE_HEADING = "## Input pipeline throughput (tokens/s on the host)"
TABLE_HEADER = ("| date | source | documents, tokens | read | tokenize | pack + batch (B x T) "
                "| end to end, first epoch | vs 500K tokens/s | machine | command |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
LARGE_HEADING = "## A token store larger than memory"
LARGE_HEADER = ("| date | store | tokens | open | first batch (shuffle included) | batches, tokens/s | peak resident "
                "memory before -> after | machine memory | command |\n| --- | --- | --- | --- | --- | --- | --- "
                "| --- | --- |\n")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
H100_DEMAND = 500_000  # tokens/s that gpt2_small's train step consumes on an H100
VOCAB = 8192


def measure(name: str, source: str, batch: int, seq_len: int, **options) -> dict:
    """Seconds and tokens/s of each stage for one source."""
    start = time.perf_counter()
    documents = corpus.read_documents(source, **options)
    read_s = time.perf_counter() - start
    tokenizer = tokenizer_lib.train_bpe(documents, VOCAB)  # once per run, not a per-token cost
    start = time.perf_counter()
    stream = lm_data.tokenize_and_split(documents, tokenizer, 0.01, seq_len).train
    tokenize_s = time.perf_counter() - start
    batched, batch_s = _batch_epoch(lm_data.LMWindows(stream, seq_len, tokenizer_lib.eos_id(tokenizer), "segments"),
                                    batch)
    return {"source": name, "documents": len(documents), "tokens": int(len(stream)),
            "read_s": read_s, "tokenize_s": tokenize_s, "batch_s": batch_s, "batched_tokens": batched,
            "read_tokens_per_s": len(stream) / read_s, "tokenize_tokens_per_s": len(stream) / tokenize_s,
            "batch_tokens_per_s": batched / batch_s,
            "end_to_end_tokens_per_s": batched / (read_s + tokenize_s + batch_s)}


def measure_store(name: str, source: str, batch: int, seq_len: int, **options) -> dict:
    """The same stages for a token store of `source` (`flax-lm prepare`): tokenizing into the store
    happens once, offline; a run only opens it (read) and cuts batches from the mapped parts."""
    with tempfile.TemporaryDirectory() as out:
        eos, counts, prepare_s = _write_store(Path(out), source, 1, corpus.read_documents(source, **options), **options)
        start = time.perf_counter()
        stream = lm_data.split_stream(token_store.Store(token_store.PREFIX + out).stream, 0.01, seq_len).train
        open_s = time.perf_counter() - start
        batched, batch_s = _batch_epoch(lm_data.LMWindows(stream, seq_len, eos, "segments"), batch)
    return {"source": name, "documents": counts["documents"], "tokens": counts["tokens"],
            "read_s": open_s, "tokenize_s": prepare_s, "batch_s": batch_s, "batched_tokens": batched,
            "read_tokens_per_s": len(stream) / open_s, "tokenize_tokens_per_s": counts["tokens"] / prepare_s,
            "batch_tokens_per_s": batched / batch_s, "end_to_end_tokens_per_s": batched / (open_s + batch_s)}


def measure_large_store(directory: str, copies: int, batch: int, seq_len: int, batches: int = 500) -> dict:
    """A store larger than this machine's memory: the embedded corpus's part written once and copied
    to `copies` parts in `directory`. Measures opening it, the first batch (the epoch's shuffle
    included), `batches` batches cut from all over it, and the process's peak resident memory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    source = corpus.DEFAULT_SOURCE
    eos, _, _ = _write_store(out, source, copies, corpus.read_documents(source, 2_000_000))
    first = out / token_store.part_name(0, copies)
    for part in range(1, copies):
        for suffix in (".bin", ".json"):
            shutil.copyfile(first.with_suffix(suffix), (out / token_store.part_name(part, copies)).with_suffix(suffix))
    resident_before = _peak_rss()
    start = time.perf_counter()
    stream = lm_data.split_stream(token_store.Store(token_store.PREFIX + str(out)).stream, 0.001, seq_len).train
    windows = lm_data.LMWindows(stream, seq_len, eos, "segments")
    open_s = time.perf_counter() - start
    iterator = lm_data.BatchIterator(len(windows), batch, seed=0)
    start = time.perf_counter()
    _next_batch(windows, iterator)
    first_batch_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        _next_batch(windows, iterator)
    batch_s = time.perf_counter() - start
    on_disk = sum(part.nbytes for part in stream.parts)
    return {"source": f"token store, {copies:,} parts ({on_disk / 2**30:.1f} GiB on disk, "
                      f"{len(windows):,} windows)", "tokens": len(stream), "open_s": open_s,
            "first_batch_s": first_batch_s, "batch_tokens_per_s": batches * batch * seq_len / batch_s,
            "peak_rss_gib": _peak_rss() / 2**30, "peak_rss_before_gib": resident_before / 2**30}


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _write_store(out: Path, source: str, parts: int, tokenizer_text: list[str], **options) -> tuple[int, dict, float]:
    """A token store of `source` in `out`, as `flax-lm prepare` writes one (a BPE tokenizer trained on
    `tokenizer_text`), its first part written of `parts`: (end token, the part's counts, seconds
    the part took)."""
    tokenizer = tokenizer_lib.train_bpe(tokenizer_text, VOCAB)
    eos = tokenizer_lib.eos_id(tokenizer)
    tokenizer.save(str(out / token_store.TOKENIZER_FILE))
    token_store.write_store_file(out, tokenizer, eos, parts, source if parts == 1 else f"{source} x {parts}")
    start = time.perf_counter()
    counts = token_store.write_part(out, 0, parts, (d.text for d in corpus.iter_shard(source, **options)),
                                    tokenizer, eos)
    return eos, counts, time.perf_counter() - start


def _next_batch(windows, iterator) -> dict:
    """The next batch of `iterator`, cut from `windows` as the training loop cuts it."""
    indices = iterator.next_global_indices()
    return length_buckets.load_batch(windows, iterator.local(indices), iterator.epoch, indices)


def _batch_epoch(windows, batch: int) -> tuple[int, float]:
    """Tokens batched and seconds taken for one epoch of `windows`, as the training loop cuts them."""
    iterator = lm_data.BatchIterator(len(windows), batch, seed=0)
    start = time.perf_counter()
    for _ in range(iterator.batches_per_epoch):
        _next_batch(windows, iterator)
    return iterator.batches_per_epoch * batch * windows.seq_len, time.perf_counter() - start


def _tfds_shakespeare(data_dir: str) -> str:
    """Prepares the tests' `shakespeare_speeches` TFDS data set in `data_dir`."""
    import tensorflow_datasets as tfds
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tfds_builders.shakespeare_speeches import shakespeare_speeches_dataset_builder as module
    module.Builder(data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(SHARED / "tinyshakespeare")))
    return "tfds:" + module.Builder.name


def record(result: dict) -> None:
    m = result["machine"]
    for r in result["sources"]:
        row = (f"| {m['date']} | {r['source']} | {r['documents']:,}, {r['tokens']:,} | {r['read_tokens_per_s']:,.0f} "
               f"| {r['tokenize_tokens_per_s']:,.0f} | {r['batch_tokens_per_s']:,.0f} ({result['batch']} x "
               f"{result['seq_len']}) | {r['end_to_end_tokens_per_s']:,.0f} | "
               f"**{r['batch_tokens_per_s'] / H100_DEMAND:.0f}x** per step, "
               f"{r['end_to_end_tokens_per_s'] / H100_DEMAND:.2f}x first epoch | {m['cpu']}, {m['cores']} cores | "
               f"`{result['command']}` |")
        add_row(TABLE_HEADING, TABLE_HEADER, row)


def record_large(result: dict) -> None:
    m, r = result["machine"], result["large_store"]
    row = (f"| {m['date']} | {r['source']} | {r['tokens']:,} | {r['open_s']:.2f} s | {r['first_batch_s']:.2f} s "
           f"| {r['batch_tokens_per_s']:,.0f} ({result['batch']} x {result['seq_len']}) "
           f"| {r['peak_rss_before_gib']:.2f} -> {r['peak_rss_gib']:.2f} GiB | {m['memory_gib']:.0f} GiB, "
           f"{m['cores']} cores | `{result['command']}` |")
    add_row(LARGE_HEADING, LARGE_HEADER, row)


def main(argv=None, prog: str = "python -m bench.input_pipeline") -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", "--seq", dest="seq", type=int, default=1024)
    parser.add_argument("--json")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--large-store", metavar="DIR", help="measure a store of --copies parts made in DIR")
    parser.add_argument("--copies", type=int, default=1000)
    args = parser.parse_args(argv)
    command = command_line(prog, argv)
    if args.large_store:
        large = measure_large_store(args.large_store, args.copies, args.batch, args.seq)
        result = {"machine": {**machine(), "memory_gib": _memory_gib()}, "batch": args.batch, "seq_len": args.seq,
                  "large_store": large, "command": command}
        publish(result, args.json, None if args.no_record else record_large)
        return
    results = [measure("embedded corpus (Python stdlib, text files)", corpus.DEFAULT_SOURCE, args.batch, args.seq),
               measure("Tiny Shakespeare (one text file)", str(SHARED / "tinyshakespeare" / "input.txt"),
                       args.batch, args.seq)]
    results.append(measure_store("token store of the embedded corpus (flax-lm prepare; tokenize = prepare, once, "
                                 "offline; read = opening it)", corpus.DEFAULT_SOURCE, args.batch, args.seq))
    with tempfile.TemporaryDirectory() as data_dir:
        source = _tfds_shakespeare(data_dir)
        results.append(measure(f"{source} (TFDS, prepared locally)", source, args.batch, args.seq,
                               tfds_data_dir=data_dir))
    result = {"machine": machine(), "batch": args.batch, "seq_len": args.seq, "sources": results,
              "command": command, "h100_demand_tokens_per_s": H100_DEMAND}
    publish(result, args.json, None if args.no_record else record)


if __name__ == "__main__":
    main()
