"""`flax-lm prepare`: a config's pre-training text tokenized once into a token store.

The store (flax_lm/data/token_store.py) holds the token stream a run of the same config
would build in memory, so training on `data.source=tokens:DIR` sees the same batches, while
start-up reads nothing and each host reads only its rows. For a corpus too large for one
machine, N processes each write one part (`--part I --parts N`): part I tokenizes shard I
of the source (by file when there are at least N files, else every N-th record, or an even
split of a TFDS split), streaming it, never holding it whole.
"""

import time
from pathlib import Path

from flax_lm.workdir import init_from
from flax_lm.workdir import layout as workdir_lib
from flax_lm.data import corpus, pipeline, token_store
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.errors import UserError

TOKENIZER_TEXT = 1 << 30   # characters a tokenizer trained here learns from, when data.max_bytes is 0


def prepare(cfg, out: Path, part: int = 0, parts: int = 1) -> dict:
    """Writes part `part` of `parts` of the store of `cfg`'s data.source in `out`; returns its
    counts (tokens, documents, characters), seconds and tokens/s."""
    d, out = cfg.data, Path(out)
    if cfg.task not in pipeline.STORED:
        raise UserError(f"flax-lm prepare makes token stores for {' and '.join(pipeline.STORED)}; "
                        f"the task is {cfg.task!r}")
    if token_store.is_store(d.source):
        raise UserError(f"data.source {d.source!r} is a token store already; give the text to tokenize")
    if parts < 1 or not 0 <= part < parts:
        raise UserError(f"--part {part} --parts {parts}: need parts >= 1 and 0 <= part < parts")
    if parts > 1 and d.max_bytes:
        raise UserError("data.max_bytes cuts the whole corpus, which one of several parts cannot see; "
                        "leave it 0 with --parts > 1")
    out.mkdir(parents=True, exist_ok=True)
    options = dict(document_field=d.document_field, tfds_data_dir=d.tfds_data_dir, tfds_download=d.tfds_download,
                   skip_bad_records=d.skip_bad_records, hf_config=d.hf_config)
    tokenizer = _tokenizer(cfg, out, options)
    eos = pipeline.end_token(cfg, tokenizer)
    token_store.write_store_file(out, tokenizer, eos, parts, d.source)
    start = time.perf_counter()
    documents = (doc.text for doc in corpus.iter_shard(d.source, d.max_bytes, shard=(part, parts), **options))
    counts = token_store.write_part(out, part, parts, documents, tokenizer, eos)
    if parts == 1 and not counts["documents"]:
        raise UserError(f"data.source: the corpus {d.source!r} is empty (no text in it)")
    seconds = time.perf_counter() - start
    return {**counts, "seconds": seconds, "tokens_per_s": counts["tokens"] / max(seconds, 1e-9)}


def _tokenizer(cfg, out: Path, options: dict):
    """The tokenizer a run of `cfg` would use: the store's own if parts were written already,
    else data.tokenizer or train.init_from's, else one trained on the corpus's beginning
    (data.max_bytes of it, or TOKENIZER_TEXT characters), saved in `out`. Training is
    deterministic, so every part's process trains the same one."""
    d, saved = cfg.data, out / workdir_lib.TOKENIZER
    given = tokenizer_lib.load(d.tokenizer) if d.tokenizer and saved.is_file() else None
    if given is not None and given.to_str() != tokenizer_lib.load(saved).to_str():
        raise UserError(f"{out} holds parts made with another tokenizer than data.tokenizer {d.tokenizer!r}; "
                        f"write to a new directory")
    needs_text = not saved.is_file() and not d.tokenizer and not cfg.train.init_from
    texts = corpus.read_documents(d.source, d.max_bytes or TOKENIZER_TEXT, **options) if needs_text else []
    return pipeline.tokenizer_for(cfg, out, texts, is_primary=True, source_tokenizer=init_from.tokenizer)
