"""The training loop shared by every task: `flax-lm train`.

It dispatches step N before reading step N-1's metrics, and reads metrics only at
logging steps, so the host never blocks the device between steps.
"""

import dataclasses
import time
from pathlib import Path

import jax
from tqdm import tqdm

from flax_lm import checkpointing, hardware, mesh as mesh_lib, optim, sharding, state_init
from flax_lm import workdir as workdir_lib
from flax_lm.data import lm_data, pipeline
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.evaluate import evaluate
from flax_lm.metrics_log import MetricsLog
from flax_lm.models import build_model, gpt2
from flax_lm.sampling import sample
from flax_lm.tasks import get_task
from flax_lm.train_step import make_eval_step, make_train_step


@dataclasses.dataclass
class Run:
    """Everything built from a config and a workdir, shared by train, evaluate and generate."""

    cfg: object
    workdir: Path
    mesh: jax.sharding.Mesh
    model: object
    tokenizer: object
    splits: lm_data.Splits
    tx: object
    schedule: object
    abstract_state: object
    shardings: object
    checkpointer: checkpointing.Checkpointer

    def to_global(self, host_batch: dict) -> dict:
        """This process's slice of a batch -> global arrays sharded over the batch axes."""
        batch_sharding = sharding.batch_sharding(self.mesh)
        return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in host_batch.items()}


def setup(cfg, workdir: Path) -> Run:
    """Builds the mesh, data, model, optimizer and checkpointer for a run (no state yet)."""
    workdir = Path(workdir)
    mesh = mesh_lib.make_mesh(cfg)
    is_primary = jax.process_index() == 0
    if is_primary:
        workdir.mkdir(parents=True, exist_ok=True)
    tokenizer, splits = pipeline.prepare(cfg, workdir, is_primary)
    model = build_model(cfg.model)
    schedule = optim.learning_rate_schedule(cfg.optim, cfg.train.steps)
    tx = optim.make_optimizer(cfg.optim, cfg.train.steps)
    abstract_state, shardings = state_init.state_shardings(model, tx, mesh, cfg.train.seed, cfg.model.max_len)
    checkpointer = checkpointing.Checkpointer(
        workdir / workdir_lib.CHECKPOINTS, save_every=cfg.train.checkpoint_every,
        keep=cfg.train.keep_checkpoints, async_writes=cfg.train.async_checkpointing)
    return Run(cfg, workdir, mesh, model, tokenizer, splits, tx, schedule, abstract_state, shardings, checkpointer)


def restore_or_init(run: Run, step: int | None = None):
    """(state, data_state or None): the checkpoint at `step` (default: latest), else a fresh state."""
    step = run.checkpointer.latest_step() if step is None else step
    if step is None:
        state = state_init.create_state(run.model, run.tx, run.mesh, run.cfg.train.seed, run.cfg.model.max_len,
                                        run.shardings)
        return state, None
    target = checkpointing.abstract_with_shardings(run.abstract_state, run.shardings)
    return run.checkpointer.restore(step, target)


def train(cfg, workdir: str | Path) -> dict:
    """Trains (or resumes) the run in `workdir`; returns the final validation metrics."""
    run = setup(cfg, workdir)
    is_primary = jax.process_index() == 0
    if is_primary:
        workdir_lib.save_config(run.workdir, cfg)
    log = MetricsLog(run.workdir, enabled=is_primary)
    state, data_state = restore_or_init(run)
    start = int(jax.device_get(state.step))
    t = cfg.train
    seq_len = cfg.model.max_len
    iterator = lm_data.BatchIterator(
        lm_data.num_windows(run.splits.train, seq_len), t.batch_size, t.seed,
        jax.process_index(), jax.process_count())
    if data_state is not None:
        iterator.restore(data_state)
        _say(is_primary, f"resumed from step {start} in {run.workdir}")

    task = get_task(cfg)
    with sharding.activate(run.mesh):
        train_step = jax.jit(
            make_train_step(run.model, task, run.tx, run.schedule, t.grad_accum_steps),
            in_shardings=(run.shardings, sharding.batch_sharding(run.mesh)),
            out_shardings=(run.shardings, sharding.replicated(run.mesh)), donate_argnums=0)
        eval_step = jax.jit(make_eval_step(run.model, task))
    flops_per_step = gpt2.flops_per_token(run.model.cfg, seq_len) * t.batch_size * seq_len
    peak = hardware.peak_flops_per_device(cfg.peak_flops_per_device)

    def run_eval(step):
        with sharding.activate(run.mesh):
            metrics = evaluate(eval_step, state.params, run.splits.validation, seq_len,
                               t.batch_size // t.grad_accum_steps, t.eval_batches, run.to_global)
        log.write(step, metrics, prefix="eval/")
        return metrics

    progress = tqdm(total=t.steps, initial=start, disable=not (t.progress_bar and is_primary),
                    unit="step", dynamic_ncols=True)
    pending, last_time, last_step = None, time.perf_counter(), start
    postfix = {}  # shown after the progress bar: latest train loss, tokens/s, validation loss
    for step in range(start, t.steps):
        batch = run.to_global(lm_data.windows(run.splits.train, iterator.next_indices(), seq_len))
        with sharding.activate(run.mesh):
            state, metrics = train_step(state, batch)
        if pending is not None and (pending[0] % t.log_every == 0):
            last_time, last_step = _log_train(log, *pending, last_time, last_step, flops_per_step,
                                              peak, t.batch_size * seq_len, postfix)
            progress.set_postfix(postfix, refresh=False)
        pending = (step + 1, metrics)
        progress.update(1)
        run.checkpointer.save(step + 1, state, iterator.state())
        if (step + 1) % t.eval_every == 0 and step + 1 < t.steps:
            postfix["val_loss"] = f"{run_eval(step + 1)['loss']:.3f}"
            progress.set_postfix(postfix, refresh=False)
    if pending is not None:
        _log_train(log, *pending, last_time, last_step, flops_per_step, peak, t.batch_size * seq_len, postfix)
    progress.close()

    final_step = int(jax.device_get(state.step))
    eval_metrics = run_eval(final_step)
    run.checkpointer.save(final_step, state, iterator.state(), force=final_step not in run.checkpointer.manager.all_steps())
    run.checkpointer.wait()
    run.checkpointer.close()
    log.close()
    _say(is_primary, f"step {final_step}: validation loss {eval_metrics['loss']:.4f}, "
                     f"perplexity {eval_metrics['perplexity']:.2f} ({int(eval_metrics['tokens'])} tokens)")
    _say(is_primary, f"checkpoints in {run.workdir / workdir_lib.CHECKPOINTS}")
    if cfg.sample.max_new_tokens > 0:
        _say(is_primary, "sample:\n" + sample_text(run, state.params, cfg.sample.prompt))
    return eval_metrics


def sample_text(run: Run, params, prompt: str, **overrides) -> str:
    """Samples a continuation of `prompt` with the run's `sample` settings (or `overrides`)."""
    s = {**run.cfg.sample.to_dict(), **overrides}
    ids = run.tokenizer.encode(prompt).ids or [tokenizer_lib.eos_id(run.tokenizer)]
    with sharding.activate(run.mesh):
        out = sample(run.model, params, ids, max_new_tokens=s["max_new_tokens"], temperature=s["temperature"],
                     top_k=s["top_k"], seed=run.cfg.train.seed, max_len=run.cfg.model.max_len)
    return run.tokenizer.decode(out)


def _log_train(log, step, metrics, last_time, last_step, flops_per_step, peak, tokens_per_step, postfix):
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now = time.perf_counter()
    steps = max(step - last_step, 1)
    values["tokens_per_sec"] = steps * tokens_per_step / max(now - last_time, 1e-9)
    if peak:
        values["mfu"] = values["tokens_per_sec"] / tokens_per_step * flops_per_step / (peak * jax.device_count())
    del values["tokens"]
    log.write(step, values, prefix="train/")
    postfix.update(loss=f"{values['loss']:.3f}", tok_per_s=f"{values['tokens_per_sec']:,.0f}")
    return now, step


def _say(is_primary: bool, text: str) -> None:
    if is_primary:
        print(text, flush=True)


