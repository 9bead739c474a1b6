"""Documents each process read, gathered on every process (multi-host pre-training).

Each process reads a disjoint shard of the source (`corpus.read_shard`), so the reading
is divided among the hosts; the shards are then exchanged through JAX's collectives, so
every process builds the same token stream, the same windows and the same tokenizer
as a single process would, and the global batches (each process loads its slice) are
those of a one-process run. The whole corpus then sits in each host's memory.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils

from flax_lm.data.corpus import Document


def all_documents(local: list[Document]) -> list[Document]:
    """The documents of every process's `local` list (on every process), in no set order."""
    if jax.process_count() == 1:
        return list(local)
    keys = np.asarray([d.key for d in local], np.int64)
    encoded = [d.text.encode("utf-8") for d in local]
    sizes = np.asarray([len(b) for b in encoded], np.int64)
    data = np.frombuffer(b"".join(encoded), np.uint8)
    counts = multihost_utils.process_allgather(np.asarray([len(local), len(data)], np.int64))
    gathered = [_gather_padded(a, int(counts[:, column].max()))
                for a, column in ((keys, 0), (sizes, 0), (data, 1))]
    documents = []
    for process, (n, n_bytes) in enumerate(counts):
        all_keys, all_sizes, all_data = (g[process] for g in gathered)
        ends = np.cumsum(all_sizes[:n])
        starts = ends - all_sizes[:n]
        blob = all_data[:n_bytes].tobytes()
        documents += [Document(int(k), blob[s:e].decode("utf-8"))
                      for k, s, e in zip(all_keys[:n], starts, ends)]
    return documents


def _gather_padded(values: np.ndarray, length: int) -> np.ndarray:
    """Every process's `values` (1-D, at most `length` long), padded to `length`: P x length."""
    padded = np.zeros(max(length, 1), values.dtype)
    padded[:len(values)] = values
    return np.asarray(multihost_utils.process_allgather(padded))
