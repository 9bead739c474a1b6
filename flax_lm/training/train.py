"""The training loop shared by every task: `flax-lm train`.

It dispatches step N before reading step N-1's metrics, and reads metrics only at
logging steps, so the host never blocks the device between steps.
"""

import collections
import contextlib
import math
import statistics
import time
from pathlib import Path

import jax
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from flax_lm.workdir import fresh_workdir, resume_check
from flax_lm.parallel import hardware
from flax_lm.training import preemption, profiling, watchdog
from flax_lm.config import training_length
from flax_lm.workdir import layout as workdir_lib
from flax_lm.workdir.best import BestKeeper
from flax_lm.workdir import lock as workdir_lock
from flax_lm.data import length_buckets, lm_data, packing_stats, pipeline
from flax_lm.errors import UserError
from flax_lm.training.evaluate import format_metrics, make_evaluator
from flax_lm.training.metrics_log import MetricsLog
from flax_lm.models import flops_per_token
from flax_lm.workdir.run import restore_or_init, setup


def train(cfg, workdir: str | Path) -> dict:
    """Trains (or resumes) the run in `workdir`; returns the final validation metrics, or {}
    when a signal stopped it early (its state is saved, and the same command resumes it) or it
    had already reached `train.steps` (then nothing is run). A new run that fails before its
    first step leaves the workdir as it found it (`fresh_workdir`). It holds the workdir's lock
    throughout: a second train on the workdir is a UserError. A multi-process run that loses a
    process, or makes no progress for train.watchdog_seconds, ends with one line (`watchdog`)."""
    is_primary, multi_process = jax.process_index() == 0, jax.process_count() > 1
    with workdir_lock.held(workdir, cfg.train.lock_stale_seconds, note=lambda line: _say(is_primary, f"note: {line}")), \
            watchdog.Watchdog(cfg.train.watchdog_seconds if multi_process else 0) as dog:
        try:
            return _train(cfg, workdir, dog)
        except Exception as e:  # a user's mistake is every process's own; anything else may be a lost peer's
            if multi_process and not isinstance(e, UserError):
                watchdog.end_run_if_lost(e)
            raise


def _train(cfg, workdir: str | Path, dog: watchdog.Watchdog) -> dict:
    is_primary = jax.process_index() == 0
    saved = resume_check.saved_config(workdir)
    allowed_changes = resume_check.check_config(cfg, saved, workdir) if saved else []
    t = cfg.train
    with fresh_workdir.removed_on_failure(workdir, enabled=is_primary and saved is None):
        run = setup(cfg, workdir)
        cfg = run.cfg   # resolved and locked: what the run saves and reads from here on
        last = max(run.checkpointer.all_steps(), default=0)
        if last >= run.steps:
            run.checkpointer.close()
            _say(is_primary, f"{run.workdir} is already at step {last}, its last (train.steps={run.steps}); nothing "
                             f"to do. To train on, rerun with --config.train.steps=N for an N above {last}")
            return {}
        if is_primary:
            workdir_lib.save_config(run.workdir, run.cfg)
        for change in allowed_changes:
            _say(is_primary, f"resuming with a changed {change}")
        log = MetricsLog(run.workdir, enabled=is_primary, wandb=(t.wandb_project, t.wandb_name, cfg.to_dict())
                         if t.wandb else None)
        state, data_state = restore_or_init(run, warn=lambda line: _say(is_primary, f"warning: {line}"))
    start = int(jax.device_get(state.step))
    train_data, validation_data = run.splits["train"], run.splits["validation"]
    padding = length_buckets.padding_of(train_data)
    iterator = lm_data.BatchIterator(len(train_data), t.batch_size, t.seed, jax.process_index(), jax.process_count(),
                                     lengths=padding.lengths if padding and cfg.data.group_by_length else None)
    _say(is_primary, packing_stats.describe(train_data, pipeline.seq_len(cfg), padding is not None))
    if t.epochs:
        _say(is_primary, training_length.describe(t, len(train_data), run.steps))
    if data_state:  # an imported checkpoint has no data position yet
        iterator.restore(data_state)
        _say(is_primary, f"resumed from step {start} in {run.workdir}")

    steps = run.train_steps  # parallel.strategy: jit, or pmap with a replicated state
    state = steps.place(state)
    evaluate_split = make_evaluator(run, run.task)
    reporter = _Reporter(log, cfg, start, run.steps,
                         flops_per_token=flops_per_token(run.model.cfg, pipeline.seq_len(cfg)), enabled=is_primary)
    best = BestKeeper(run.workdir, t.best_metric, t.early_stopping_patience, t.async_checkpointing,
                      is_primary) if t.best_metric else None

    def run_eval(step, current):
        """Evaluates `current` (a state in the jit layout)."""
        metrics = evaluate_split(current.params, validation_data, t.eval_batches)
        log.write(step, metrics, prefix="eval/")
        stop = best.update(step, metrics, current) if best else False
        dog.progress()
        return metrics, stop

    pending = None  # (step, metrics on device): read one step late, so the device never waits
    with preemption.StopRequests(run.checkpointer.manager) as stop_requests, \
            profiling.StepProfiler(t.profile_steps, run.workdir, enabled=is_primary) as profiler:
        for step in range(start, run.steps):
            profiler.before_step(step)
            epoch, data_before = iterator.epoch, iterator.state()
            global_indices = iterator.next_global_indices()
            host_batch = length_buckets.load_batch(train_data, iterator.local(global_indices), epoch, global_indices)
            state, metrics = steps(state, host_batch)
            profiler.after_step(step, (state, metrics))
            if t.nonfinite_policy == "stop" and int(metrics["nonfinite"]):
                _halt_on_nonfinite(run, steps.global_state(state), data_before, step + 1, log, best)
            if pending is not None and pending[0] % t.log_every == 0:
                reporter.train_metrics(*pending)
            pending = (step + 1, metrics)
            reporter.advance(_tokens(host_batch))
            dog.progress()
            if run.checkpointer.due(step + 1):
                run.checkpointer.save(step + 1, steps.global_state(state), iterator.state())
            if stop_requests.requested(step + 1):
                reporter.train_metrics(*pending)
                reporter.close()
                _save_and_close(run, steps.global_state(state), iterator.state(), log, best)
                _say(is_primary, f"stopped by {stop_requests.received} after step {step + 1}; its checkpoint is in "
                                 f"{run.workdir / workdir_lib.CHECKPOINTS}; run the same command to resume")
                return {}
            if (step + 1) % t.eval_every == 0 and step + 1 < run.steps:
                eval_metrics, stop = run_eval(step + 1, steps.global_state(state))
                reporter.eval_loss(eval_metrics["loss"])
                if stop:
                    _say(is_primary, f"early stopping at step {step + 1}: no better {t.best_metric} in "
                                     f"{t.early_stopping_patience} evaluations")
                    break
    if pending is not None:
        reporter.train_metrics(*pending)
    reporter.close()

    state = steps.global_state(state)
    final_step = int(jax.device_get(state.step))
    eval_metrics, _ = run_eval(final_step, state)
    _save_and_close(run, state, iterator.state(), log, best)
    if best:
        _say(is_primary, f"best {t.best_metric}: {best.best:.4f} (checkpoint in {run.workdir / 'best'})")
    _say(is_primary, f"step {final_step}: validation " + format_metrics(eval_metrics))
    _say(is_primary, f"checkpoints in {run.workdir / workdir_lib.CHECKPOINTS}")
    if cfg.sample.max_new_tokens > 0:  # every process decodes (the decoding is collective); one prints
        sample = run.task.end_of_run_sample(evaluate_split.inference(state.params), validation_data,
                                            cfg.sample.prompt)
        if sample is not None:
            _say(is_primary, sample)
    return eval_metrics


def _save_and_close(run, state, data_state: dict, log, best) -> None:
    """The end of every way out of the loop: `state` saved (unless its step has a checkpoint
    already) and durable, the checkpointers and the metrics log closed."""
    run.checkpointer.save_final(int(jax.device_get(state.step)), state, data_state)
    run.checkpointer.wait()
    run.checkpointer.close()
    if best:
        best.close()
    log.close()


def _halt_on_nonfinite(run, state, data_state: dict, step: int, log, best) -> None:
    """train.nonfinite_policy=stop: `state` is still the last good one (the step left it
    untouched); it is saved with the data position before the bad batch, then a UserError."""
    _save_and_close(run, state, data_state, log, best)
    raise UserError(f"step {step}: the loss or gradient norm is not finite; stopped (train.nonfinite_policy=stop) "
                    f"with the last good state saved as checkpoint {int(jax.device_get(state.step))} in "
                    f"{run.workdir / workdir_lib.CHECKPOINTS}")


def _tokens(host_batch: dict) -> int:
    """Token positions the step computes on all processes (padding included), from this process's
    equal share of the batch: rows x the widest per-token array."""
    rows = next(iter(host_batch.values())).shape[0] * jax.process_count()
    return rows * max((v.shape[1] for v in host_batch.values() if v.ndim > 1), default=1)


class _Reporter:
    """Train metrics to the log (with tokens/s and MFU) and to the console progress bar."""

    def __init__(self, log: MetricsLog, cfg, start_step: int, steps: int, flops_per_token: float, enabled: bool):
        self.log, self.enabled = log, enabled
        self.spike_factor = cfg.train.loss_spike_factor
        self.recent_losses = collections.deque(maxlen=20)
        self.skipped = None  # skipped_steps at the last report
        self.tokens = 0   # since the last report
        self.flops_per_token = flops_per_token
        self.peak = hardware.peak_flops_per_device(cfg.peak_flops_per_device)
        self.last_time = time.perf_counter()
        self.postfix = {}
        self.bar = tqdm(total=steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=not (cfg.train.progress_bar and enabled))
        # log lines (Orbax's "Waiting for previous save", through absl) printed above the bar, not into it
        self.console_logging = contextlib.ExitStack()
        if not self.bar.disable:
            self.console_logging.enter_context(logging_redirect_tqdm())

    def advance(self, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(1)

    def train_metrics(self, step: int, metrics) -> None:
        """Reads `metrics` (blocking on that step only) and reports them with throughput."""
        values = {k: float(v) for k, v in jax.device_get(metrics).items() if k not in ("tokens", "nonfinite")}
        self._check_numbers(step, values)
        now = time.perf_counter()
        values["tokens_per_sec"] = self.tokens / max(now - self.last_time, 1e-9)
        if self.peak:
            values["mfu"] = values["tokens_per_sec"] * self.flops_per_token / (self.peak * jax.device_count())
        self.log.write(step, values, prefix="train/")
        self.last_time, self.tokens = now, 0
        self.postfix.update(loss=f"{values['loss']:.3f}", tok_per_s=f"{values['tokens_per_sec']:,.0f}")
        self.bar.set_postfix(self.postfix, refresh=False)

    def _check_numbers(self, step: int, values: dict) -> None:
        """Says when steps were skipped for non-finite numbers since the last report, and when
        the loss jumps above `spike_factor` times the median of the recent logged losses."""
        skipped = int(values["skipped_steps"])
        if self.skipped is not None and skipped > self.skipped:
            self._say(f"step {step}: {skipped - self.skipped} step(s) skipped since the last report for a "
                      f"non-finite loss or gradient norm ({skipped} in all)")
        self.skipped = skipped
        loss = values["loss"]
        if not math.isfinite(loss):
            return
        if self.spike_factor and len(self.recent_losses) >= 5:
            median = statistics.median(self.recent_losses)
            if loss > self.spike_factor * median:
                values["loss_spike"] = loss / median
                self._say(f"step {step}: loss spike: {loss:.4g} is {loss / median:.1f}x the median of the last "
                          f"{len(self.recent_losses)} logged losses ({median:.4g})")
        self.recent_losses.append(loss)

    def _say(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def eval_loss(self, loss: float) -> None:
        self.postfix["val_loss"] = f"{loss:.3f}"
        self.bar.set_postfix(self.postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
        self.console_logging.close()


def _say(is_primary: bool, text: str) -> None:
    if is_primary:
        print(text, flush=True)


