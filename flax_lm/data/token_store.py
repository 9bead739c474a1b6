"""A pre-tokenized corpus on disk, read lazily: `data.source = "tokens:DIR"`.

`flax-lm prepare` (flax_lm/workdir/prepare.py) writes DIR once: the token stream that a run would
build in memory (each document's ids, then the end token), as raw little-endian integers
in one or more part files, with the tokenizer that made them. A run then maps the parts
(np.memmap) instead of reading text: start-up costs nothing, memory holds only the pages
a batch touches, and every host reads just its own rows of each batch, so a corpus of any
size serves any number of hosts.

DIR holds
  store.json                    format, dtype, end token id, number of parts, the source
  tokenizer.json                the tokenizer every part was made with
  tokens-IIIII-of-NNNNN.bin     part I's ids
  tokens-IIIII-of-NNNNN.json    part I's counts, written last: a part without it is unfinished
Parts may be written by different processes or machines (`--part I --parts N`); in part
order they make one stream, whose tail is the validation split as for text.
"""

import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from flax_lm import json_files
from flax_lm.data import lm_data
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.errors import UserError

PREFIX = "tokens:"
FORMAT = "flax_lm.tokens/1"
STORE_FILE = "store.json"
TOKENIZER_FILE = "tokenizer.json"


def is_store(source: str) -> bool:
    return source.startswith(PREFIX)


def store_dir(source: str) -> Path:
    return Path(source[len(PREFIX):])


def part_name(part: int, parts: int) -> str:
    return f"tokens-{part:05d}-of-{parts:05d}"


def dtype_for(vocab_size: int) -> np.dtype:
    """The narrowest unsigned integer that holds every id: half the disk and page cache of int32
    for vocabularies up to 65,536 (GPT-2's 50,257 included)."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def tokenizer_digest(tokenizer: Tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


class TokenStream:
    """Token ids [start, stop) of a list of 1-D arrays (memory-mapped parts) seen as one
    stream, read only where indexed. Indexing with an integer array (any shape) or a slice
    of step 1 gives int32 ids, as a numpy stream would."""

    def __init__(self, parts: list[np.ndarray], start: int = 0, stop: int | None = None):
        self.parts = parts
        self.bounds = np.cumsum([0] + [len(p) for p in parts])   # part i holds [bounds[i], bounds[i+1])
        self.start = start
        self.stop = int(self.bounds[-1]) if stop is None else stop

    def __len__(self) -> int:
        return self.stop - self.start

    def view(self, start: int, stop: int) -> "TokenStream":
        """Ids [start, stop) of this stream, as a stream (nothing read)."""
        return TokenStream(self.parts, self.start + start, self.start + stop)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("a token stream slices with step 1 only")
            key = np.arange(start, max(start, stop))
        positions = np.asarray(key, np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"token index out of range for a stream of {len(self)}")
        flat = positions.reshape(-1) + self.start
        owner = np.searchsorted(self.bounds, flat, side="right") - 1
        out = np.empty(flat.shape, np.int32)
        for part in np.unique(owner):
            here = owner == part
            out[here] = self.parts[part][flat[here] - self.bounds[part]]
        return out.reshape(positions.shape)


def write_part(directory: Path, part: int, parts: int, documents: Iterable[str], tokenizer: Tokenizer,
               eos: int, batch_characters: int = 4 << 20) -> dict:
    """Encodes `documents` into part `part` of `parts` as a run joins them in memory
    (`lm_data.encode_documents`), a batch of about `batch_characters` of text at a time, encoded
    (in the tokenizer's threads) while this thread reads the next one. The ids are renamed into
    place, and the part's counts written, only when all are on disk. Returns the counts (tokens,
    documents, characters)."""
    base = Path(directory) / part_name(part, parts)
    dtype = dtype_for(tokenizer.get_vocab_size())
    partial = base.with_name(f"{base.name}.bin.{os.getpid()}.partial")
    counts = {"tokens": 0, "documents": 0, "characters": 0}

    def write(ids: np.ndarray) -> None:
        file.write(ids.astype(dtype).tobytes())
        counts["tokens"] += len(ids)

    with open(partial, "wb") as file, ThreadPoolExecutor(max_workers=1) as pool:
        encoding = None
        for texts in _batches(documents, batch_characters):
            counts["documents"] += len(texts)
            counts["characters"] += sum(len(t) for t in texts)
            if encoding is not None:
                write(encoding.result())
            encoding = pool.submit(lm_data.encode_documents, texts, tokenizer, eos)
        if encoding is not None:
            write(encoding.result())
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, base.with_suffix(".bin"))
    json_files.write_json(base.with_suffix(".json"), counts)   # last: its presence says the part is whole
    return counts


def _batches(documents: Iterable[str], batch_characters: int) -> Iterator[list[str]]:
    batch, size = [], 0
    for text in documents:
        batch.append(text)
        size += len(text)
        if size >= batch_characters:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def write_store_file(directory: Path, tokenizer: Tokenizer, eos: int, parts: int, source: str) -> None:
    """store.json, the same from every part's writer; a directory made for other settings is refused.
    The tokenizer must already be in the directory (`TOKENIZER_FILE`)."""
    meta = {"format": FORMAT, "dtype": dtype_for(tokenizer.get_vocab_size()).str, "eos": eos, "parts": parts,
            "vocab_size": tokenizer.get_vocab_size(), "tokenizer_sha256": tokenizer_digest(tokenizer),
            "source": source}
    store = Path(directory) / STORE_FILE
    existing = json_files.read_json(store) if store.is_file() else meta
    if existing != meta:
        raise UserError(f"{store}: was written for other settings ({_difference(existing, meta)}); "
                        f"write to a new directory")
    json_files.write_json(store, meta)


class Store:
    """An opened store: its tokenizer, end token and whole stream (`TokenStream`)."""

    def __init__(self, source: str):
        directory = store_dir(source)
        if not (directory / STORE_FILE).is_file():
            raise UserError(f"data.source {source!r}: {directory} is not a token store (no {STORE_FILE}); "
                            f"make one with flax-lm prepare --config ... --out {directory}")
        meta = json_files.read_json(directory / STORE_FILE)
        if meta.get("format") != FORMAT:
            raise UserError(f"{directory / STORE_FILE}: format {meta.get('format')!r}, this flax_lm reads {FORMAT!r}")
        self.tokenizer = tokenizer_lib.load(directory / TOKENIZER_FILE)
        if tokenizer_digest(self.tokenizer) != meta["tokenizer_sha256"]:
            raise UserError(f"{directory / TOKENIZER_FILE}: is not the tokenizer the store was made with")
        self.eos = meta["eos"]
        dtype = np.dtype(meta["dtype"])
        parts, missing = [], []
        for part in range(meta["parts"]):
            base = directory / part_name(part, meta["parts"])
            counts, ids = base.with_suffix(".json"), base.with_suffix(".bin")
            if not counts.is_file():
                missing.append(part)
                continue
            tokens = json_files.read_json(counts)["tokens"]
            size = ids.stat().st_size if ids.is_file() else -1
            if size != tokens * dtype.itemsize:
                raise UserError(f"{ids}: holds {max(size, 0)} bytes, its part file says "
                                f"{tokens} tokens of {dtype.itemsize} bytes; prepare that part again")
            parts.append(np.memmap(ids, dtype=dtype, mode="r") if tokens else np.empty(0, dtype))
        if missing:
            listed = ", ".join(str(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise UserError(f"data.source {source!r}: {len(missing)} of {meta['parts']} parts are not finished "
                            f"(part {listed}); run flax-lm prepare --part I --parts {meta['parts']} for them")
        self.stream = TokenStream(parts)


def _difference(old: dict, new: dict) -> str:
    key = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
    return f"{key} {old.get(key)!r}, now {new.get(key)!r}"
