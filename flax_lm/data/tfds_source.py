"""TFDS data sets by name: `tfds:NAME[/CONFIG][:SPLIT]`, resolved as tensorflow-datasets resolves it.

A registered name (`glue/sst2`, `imdb_reviews`, `c4/en`) is prepared in `data_dir` the first
time (downloading, when allowed); a data set prepared by a builder of one's own is found by
its name in `data_dir` with no code of it imported (TFDS reads its `dataset_info.json`).
Records come in the order they were written (files not shuffled), so a run reads the same
documents in the same order every time, and per-process shards (`tfds.even_splits`) are
disjoint and together the whole split.
"""

import dataclasses
import difflib
import re
from collections.abc import Iterator

from flax_lm.errors import UserError

PREFIX = "tfds:"
_SPLIT_NAME = re.compile(r"^([A-Za-z_][\w-]*)")


@dataclasses.dataclass(frozen=True)
class TfdsName:
    name: str    # "glue/sst2", "imdb_reviews", "wmt14_translate/de-en:1.0.0"
    split: str   # "train", "validation[:10%]", ...


def is_tfds(source: str) -> bool:
    return source.startswith(PREFIX)


def parse(source: str, default_split: str = "train") -> TfdsName:
    """`tfds:NAME[/CONFIG][:SPLIT]` -> TfdsName; the split defaults to `default_split`."""
    body = source[len(PREFIX):].strip()
    name, _, split = body.partition(":")
    if not name:
        raise UserError(f"{source!r}: give a data set name, as in tfds:glue/sst2:train")
    return TfdsName(name=name, split=split or default_split)


class TfdsSplit:
    """One split of a TFDS data set, its builder found (and prepared) once."""

    def __init__(self, source: str, data_dir: str = "", download: bool = True, default_split: str = "train"):
        self.source, self.spec = source, parse(source, default_split)
        self.builder = _builder(self.spec, data_dir, download)
        self.split = _split(self.spec, self.builder)

    def fields(self) -> dict[str, list[str] | None]:
        """The record fields: for a class-label field its class names in id order, else None."""
        features = self.builder.info.features
        return {name: list(f.names) if hasattr(f, "names") else None for name, f in features.items()}

    def records(self, fields: list[str], shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, object]]:
        """The `fields` of each record (text decoded to str), in the order prepared; with `shard`
        (index, count), only that part of an even split."""
        missing = [f for f in fields if f not in self.builder.info.features]
        if missing:
            raise UserError(f"{self.source}: the records have no field {missing[0]!r}; "
                            f"their fields are {sorted(self.builder.info.features)}")
        split = self.split
        index, count = shard
        if count > 1:
            split = _tfds().even_splits(split, n=count, drop_remainder=False)[index]
        dataset = self.builder.as_dataset(split=split, shuffle_files=False)
        for record in _tfds().as_numpy(dataset.map(lambda r: {f: r[f] for f in fields})):
            yield {f: v.decode("utf-8") if isinstance(v, bytes) else v for f, v in record.items()}


def _tfds():
    try:
        import tensorflow_datasets
    except ImportError:
        raise UserError("tfds: sources need tensorflow-datasets and tensorflow: "
                        "pip install 'flax_lm[tfds]'") from None
    return tensorflow_datasets


def _builder(spec: TfdsName, data_dir: str, download: bool):
    tfds = _tfds()
    where = data_dir or "TFDS's default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    try:
        builder = tfds.builder(spec.name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(spec.name.split("/")[0], tfds.list_builders(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"tfds:{spec.name}: no such TFDS data set{hint}: it is not registered in tensorflow-datasets and not "
            f"prepared in {where}; for a data set of your own, prepare it (`tfds build PATH --data_dir DIR`) and "
            f"set data.tfds_data_dir=DIR") from None
    except ValueError as e:  # e.g. a config the data set does not have
        raise UserError(f"tfds:{spec.name}: {_first_line(e)}") from None
    if not builder.is_prepared():
        if not download:
            raise UserError(f"tfds:{spec.name}: is not prepared in {where}; prepare it there "
                            f"(`tfds build {spec.name} --data_dir DIR`) or set data.tfds_download=True")
        try:
            builder.download_and_prepare()
        except Exception as e:  # network, manual-download and disk errors all end here
            raise UserError(f"tfds:{spec.name}: could not be downloaded and prepared in {where} "
                            f"({type(e).__name__}: {_first_line(e)})") from None
    return builder


def _split(spec: TfdsName, builder) -> str:
    """The split, checked against those the data set has (slices such as train[:10%] allowed)."""
    base = _SPLIT_NAME.match(spec.split)
    splits = sorted(builder.info.splits)
    if base is None or base.group(1) not in splits:
        raise UserError(f"tfds:{spec.name}: has no split {spec.split!r}; it has {', '.join(splits)}")
    return spec.split


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]
