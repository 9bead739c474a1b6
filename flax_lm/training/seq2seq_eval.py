"""Scores of generated text in a seq2seq evaluation: each source of a split is decoded (with the
run's `sample` settings: greedy, or beam search with num_beams > 1) and compared with its reference."""

import numpy as np

from flax_lm.metrics import generated_text_metrics
from flax_lm.workdir.run import decoding_weights, generate_ids


def generated_outputs(run, params, dataset, count: int) -> list[str]:
    """The decoded outputs of the first `count` sources of `dataset`, in batches of the run's batch
    size; the last batch is filled up with copies of its last source (and their outputs dropped),
    so every batch has one shape and the decoding loop compiles once."""
    batch = run.cfg.train.batch_size
    params = decoding_weights(run, params)
    outputs = []
    for start in range(0, count, batch):
        rows = np.minimum(np.arange(start, start + batch), count - 1)
        new_ids = generate_ids(run, params, dataset.source_ids(rows), num_return_sequences=1)
        outputs += [run.tokenizer.decode(ids) for ids in new_ids[:min(batch, count - start)]]
    return outputs


def generated_metrics(run, params, dataset, names: list[str], max_examples: int = 0) -> dict[str, float]:
    """{metric: score} of `names` over the first `max_examples` examples of `dataset` (0: all)."""
    count = min(len(dataset), max_examples) if max_examples else len(dataset)
    hypotheses = generated_outputs(run, params, dataset, count)
    return generated_text_metrics(names, hypotheses, list(dataset.references[:count]))
