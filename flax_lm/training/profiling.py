"""A JAX profiler trace of a window of training steps (`train.profile_steps`), for TensorBoard.

`--config.train.profile_steps=START:STOP` traces the steps START .. STOP-1 of `flax-lm train`,
counted as the loop counts them: step N takes the state from N to N+1 (its metrics and its
checkpoint are logged as N+1). The trace goes to WORKDIR/profile in the layout TensorBoard's
profile plugin reads (`plugins/profile/RUN/HOST.xplane.pb`):

    tensorboard --logdir WORKDIR/profile
"""

from pathlib import Path

import jax

from flax_lm.config.load import parse_steps

PROFILE_DIR = "profile"


class StepProfiler:
    """Starts the trace before step START (or the first step a resumed run makes, when that is
    inside the window) and stops it once step STOP-1's outputs are computed. Only process 0
    traces. As a context manager it also stops a trace that the loop leaves early."""

    def __init__(self, profile_steps: str, workdir: str | Path, enabled: bool = True):
        self.window = parse_steps(profile_steps) if enabled else None
        self.trace_dir = Path(workdir) / PROFILE_DIR
        self.active, self.last_outputs = False, None

    def before_step(self, step: int) -> None:
        """Call before loading and dispatching step `step`."""
        if self.window and not self.active and self.window[0] <= step < self.window[1]:
            jax.profiler.start_trace(str(self.trace_dir))
            self.active, self.first, self.last = True, step, step

    def after_step(self, step: int, outputs) -> None:
        """Call with the pytree that step `step` returned, right after dispatching it."""
        if self.active:
            self.last, self.last_outputs = step, outputs
            if step + 1 >= self.window[1]:
                self._stop()

    def _stop(self, wait: bool = True) -> None:
        """Waits for the last traced step's outputs (unless the loop failed), then writes the trace."""
        if wait:
            jax.block_until_ready(self.last_outputs)
        jax.profiler.stop_trace()
        self.active, self.last_outputs = False, None
        print(f"profile of steps {self.first}..{self.last} in {self.trace_dir} "
              f"(tensorboard --logdir {self.trace_dir})", flush=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_) -> None:
        if self.active:
            self._stop(wait=exc_type is None)
