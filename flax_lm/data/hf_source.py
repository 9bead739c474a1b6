"""Hugging Face `datasets` by name or path: `hf:NAME[:SPLIT]`, read as `datasets` reads it.

NAME is what `datasets.load_dataset` takes (a hub name such as `wikitext` or `user/corpus`, read
from the hub where there is a network and from the local cache where there is none; a local
directory of data files), or a directory written by `Dataset.save_to_disk` /
`DatasetDict.save_to_disk` (read by `load_from_disk`), or a data file or glob of one kind
(`.csv`, `.json`, `.jsonl`, `.parquet`, `.txt`, `.arrow`; read by that `datasets` builder). The
config of a hub data set with several (`glue`'s `sst2`) is `data.hf_config`. SPLIT defaults to
`train`; slices (`train[:10%]`) are `load_dataset`'s own.

Records come in the order of the data set, so a run reads the same documents in the same order
every time; per-process shards (`Dataset.shard(contiguous=True)`) are disjoint, contiguous and
together the whole split.
"""

import dataclasses
import glob
import re
from collections.abc import Iterator
from pathlib import Path

from flax_lm.errors import UserError

PREFIX = "hf:"
# the datasets builder that reads a data file of each suffix
_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text",
             ".arrow": "arrow"}
_SPLIT_NAME = re.compile(r"^([A-Za-z_][\w-]*)")
_BATCH = 1000  # records a read from the Arrow table at a time


@dataclasses.dataclass(frozen=True)
class HfName:
    name: str    # "wikitext", "user/corpus", "/data/saved", "/data/train-*.parquet"
    split: str   # "train", "validation", "train[:10%]"
    named: bool  # the split was given (not the default)


def is_hf(source: str) -> bool:
    return str(source).startswith(PREFIX)


def parse(source: str, default_split: str = "train") -> HfName:
    """`hf:NAME[:SPLIT]` -> HfName; the split (after NAME's first ':') defaults to `default_split`."""
    body = source[len(PREFIX):].strip()
    name, _, split = body.partition(":")
    if not name:
        raise UserError(f"{source!r}: give a data set name or path, as in hf:wikitext:train or hf:/data/corpus")
    return HfName(name=name, split=split or default_split, named=bool(split))


class HfSplit:
    """One split of a `datasets` data set, loaded (and, from the hub, downloaded and cached) once."""

    def __init__(self, source: str, config_name: str = "", default_split: str = "train"):
        self.source, self.spec = source, parse(source, default_split)
        self.dataset = _load(self.spec, config_name)

    def fields(self) -> dict[str, list[str] | None]:
        """The record fields: for a class-label field its class names in id order, else None."""
        return {name: list(f.names) if hasattr(f, "names") else None for name, f in self.dataset.features.items()}

    def records(self, fields: list[str], shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, object]]:
        """The `fields` of each record, in the data set's order; with `shard` (index, count), only
        that contiguous part of it."""
        missing = [f for f in fields if f not in self.dataset.features]
        if missing:
            raise UserError(f"{self.source}: the records have no field {missing[0]!r}; "
                            f"their fields are {sorted(self.dataset.features)}")
        index, count = shard
        dataset = self.dataset.select_columns(fields)
        if count > 1:
            dataset = dataset.shard(num_shards=count, index=index, contiguous=True)
        for batch in dataset.iter(batch_size=_BATCH):
            for i in range(len(batch[fields[0]])):
                yield {f: batch[f][i] for f in fields}


def _datasets():
    try:
        import datasets
    except ImportError:
        raise UserError("hf: sources need the datasets package: pip install 'flax_lm[hf]'") from None
    datasets.disable_progress_bars()  # its bars would land inside the run's own output
    return datasets


def _load(spec: HfName, config_name: str):
    datasets = _datasets()
    where = Path(spec.name).expanduser()
    if (where / "state.json").is_file() or (where / "dataset_dict.json").is_file():
        return _saved(spec, datasets.load_from_disk(str(where)))
    files = sorted(glob.glob(str(where))) if glob.has_magic(spec.name) else [str(where)] if where.is_file() else []
    if glob.has_magic(spec.name) and not files:
        raise UserError(f"hf:{spec.name}: no file matches it")
    try:
        if files:
            return datasets.load_dataset(_builder(spec, files), data_files={"train": files}, split=spec.split)
        return datasets.load_dataset(str(where) if where.is_dir() else spec.name, config_name or None,
                                     split=spec.split)
    except ValueError as e:   # an unknown split or config; datasets names those it has
        raise UserError(f"hf:{spec.name}: {_first_line(e)}") from None
    except Exception as e:    # not on the hub, no network and not cached, a file it cannot parse ...
        hint = "" if where.exists() else (" (not a local path; a hub name needs a network or the data set "
                                          "in the local datasets cache)")
        raise UserError(f"hf:{spec.name}: could not be loaded ({type(e).__name__}: {_first_line(e)}){hint}") from None


def _builder(spec: HfName, files: list[str]) -> str:
    """The builder of data files that all have one suffix `datasets` reads."""
    suffixes = sorted({Path(f).suffix.lower() for f in files})
    if len(suffixes) != 1 or suffixes[0] not in _BUILDERS:
        raise UserError(f"hf:{spec.name}: give data files of one kind ({', '.join(_BUILDERS)}); "
                        f"found {', '.join(suffixes) or 'none'}")
    if suffixes[0] == ".tsv":
        raise UserError(f"hf:{spec.name}: datasets reads .tsv through its csv builder only with options; "
                        f"give the file itself as data.source or data.train, without hf:")
    return _BUILDERS[suffixes[0]]


def _saved(spec: HfName, saved):
    """The split of what `save_to_disk` wrote: a DatasetDict's split by name, a Dataset whole."""
    if not hasattr(saved, "keys"):
        if spec.named:
            raise UserError(f"hf:{spec.name}: is one saved Dataset, not a DatasetDict of splits; "
                            f"leave :{spec.split} off")
        return saved
    if spec.split not in saved:
        base = _SPLIT_NAME.match(spec.split)
        sliced = " (slices are for load_dataset's data sets)" if base and base.group(1) in saved else ""
        raise UserError(f"hf:{spec.name}: has no split {spec.split!r}{sliced}; it has {', '.join(sorted(saved))}")
    return saved[spec.split]


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]
