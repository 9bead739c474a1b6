"""A run's model as a task uses it outside the train step (`flax_lm.tasks.Inference`): per-example
outputs of a split, text generated for prompts in fixed-shape batches, and a continuation of a prompt."""

import numpy as np

from flax_lm.workdir.run import decoding_weights, generate_ids, sample_text


class RunInference:
    """`params` of `run` (a flax_lm.workdir.run.Run); `outputs(params, dataset)` runs its eval step
    over a split (`make_evaluator(...).outputs`)."""

    def __init__(self, run, params, outputs):
        self.run, self.params, self._outputs = run, params, outputs
        self._decoding = None  # the params prepared for decoding, made at the first `generate`

    def outputs(self, dataset) -> dict[str, np.ndarray]:
        return self._outputs(self.params, dataset)

    def generate(self, prompt_ids: list[list[int]]) -> list[str]:
        """The decoded new text of each prompt, in batches of the run's batch size; the last batch
        is filled up with copies of its last prompt (and their outputs dropped), so every batch
        has one shape and the decoding loop compiles once."""
        run, batch, count = self.run, self.run.cfg.train.batch_size, len(prompt_ids)
        if self._decoding is None:
            self._decoding = decoding_weights(run, self.params)
        texts = []
        for start in range(0, count, batch):
            rows = np.minimum(np.arange(start, start + batch), count - 1)
            new_ids = generate_ids(run, self._decoding, [prompt_ids[r] for r in rows], num_return_sequences=1)
            texts += [run.tokenizer.decode(ids) for ids in new_ids[:min(batch, count - start)]]
        return texts

    def continue_text(self, prompt: str) -> str:
        return sample_text(self.run, self.params, prompt)
