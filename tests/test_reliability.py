"""Reliability: a run interrupted by signals and kill -9 (during checkpoint writes too) ends
bit-identical to an uninterrupted one; damaged checkpoints are set aside, never trusted and
never deleted; a resume with an incompatible config is refused; non-finite numbers are
caught under both policies."""

import dataclasses
import json
import os
import random
import shutil
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from bench import soak
from flax_lm.config import load as config_lib
from flax_lm import backends
from flax_lm.training import optim, train
from flax_lm.workdir import run as run_lib
from flax_lm.workdir.checkpointing import UNREADABLE, Checkpointer
from flax_lm.data import length_buckets
from flax_lm.errors import UserError
from flax_lm.models import build_model
from flax_lm.training.state_init import create_state, state_shardings
from flax_lm.tasks import get_task
from flax_lm.training.train_step import make_train_step


def _final(cfg, workdir):
    run = run_lib.setup(cfg, workdir)
    state, data_state = run_lib.restore_or_init(run)
    run.checkpointer.close()
    return jax.device_get(state), data_state


def _assert_same_run(cfg, workdir_a, workdir_b):
    (a, data_a), (b, data_b) = _final(cfg, workdir_a), _final(cfg, workdir_b)
    assert int(a.step) == int(b.step) == cfg.train.steps and data_a == data_b
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_signals_and_kills_at_any_moment_resume_to_the_same_parameters(tmp_path, shakespeare):
    """The suite's short version of `python -m bench.soak`, with a SIGTERM first."""
    overrides = soak.OVERRIDES + ["--config.train.steps=120", "--config.train.checkpoint_every=3",
                                  "--config.train.eval_every=60"]
    cfg = config_lib.load("gpt2_tiny", overrides)
    train.train(cfg, tmp_path / "uninterrupted")
    run = soak.Training(tmp_path / "interrupted", overrides)

    # SIGTERM: the current step finishes, its checkpoint is written, exit status 0
    run.start()
    assert run.wait_until(lambda: run.latest_checkpoint() >= 9)
    run.process.send_signal(signal.SIGTERM)
    done = run.finish()
    assert done.returncode == 0, done.stderr
    stopped = int(done.stdout.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert run.latest_checkpoint() == stopped

    # kill -9 while an asynchronous checkpoint write is under way, then at a random moment (bench.soak
    # kills 6 times over 1,000 steps; each restart here costs the suite a process start and its compiling)
    assert run.kill_after_progress(during_write=True, delay=0.0)
    assert run.kill_after_progress(during_write=False, delay=random.Random(0).uniform(0.0, 1.0))
    run.start()
    done = run.finish()
    assert done.returncode == 0, done.stderr
    assert "resumed from step" in done.stdout
    _assert_same_run(cfg, tmp_path / "uninterrupted", run.workdir)


def _truncate_largest_array_file(step_dir: Path) -> None:
    largest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    os.truncate(largest, largest.stat().st_size // 2)


def _delete_data_item(step_dir: Path) -> None:
    for path in (step_dir / "data").iterdir():
        path.unlink()


@pytest.mark.parametrize("damage", [_truncate_largest_array_file, _delete_data_item])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_used(tmp_path, shakespeare, capsys, damage):
    cfg = tiny_config(train=dict(steps=12, checkpoint_every=4, eval_every=12, keep_checkpoints=5))
    train.train(cfg, tmp_path / "uninterrupted")
    train.train(cfg, tmp_path / "damaged")
    shutil.rmtree(tmp_path / "damaged" / "checkpoints" / "12")  # a crash before step 12 was saved
    damage(tmp_path / "damaged" / "checkpoints" / "8")
    capsys.readouterr()
    train.train(cfg, tmp_path / "damaged")
    out = capsys.readouterr().out
    assert "checkpoint 8 in" in out and "resuming from checkpoint 4" in out, out
    moved = list((tmp_path / "damaged" / UNREADABLE).iterdir())
    assert [p.name.split("-")[0] for p in moved] == ["8"]  # kept for inspection, not deleted
    _assert_same_run(cfg, tmp_path / "uninterrupted", tmp_path / "damaged")


def test_a_checkpoint_that_fits_no_config_is_refused_and_left_alone(tmp_path, shakespeare):
    cfg = tiny_config(train=dict(steps=4, checkpoint_every=4, eval_every=4))
    train.train(cfg, tmp_path)
    # the config file says the run is another one than its checkpoints hold
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["model"].update(d_model=32, d_ff=4 * 32)   # the sizes as the run below saves them
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match="checkpoint 4 in .* cannot be restored"):
        train.train(tiny_config(model=dict(d_model=32), train=dict(steps=8, eval_every=4)), tmp_path)
    assert (tmp_path / "checkpoints" / "4").is_dir() and not (tmp_path / UNREADABLE).exists()


def test_resume_refuses_a_changed_model_or_data_and_allows_safe_changes(tmp_path, shakespeare, capsys):
    cfg = tiny_config(train=dict(steps=4, checkpoint_every=4, eval_every=4))
    train.train(cfg, tmp_path)
    saved = (tmp_path / "config.json").read_text()
    changed = tiny_config(model=dict(d_model=32), data=dict(max_bytes=100_000), train=dict(steps=8, eval_every=4))
    with pytest.raises(UserError) as refused:
        train.train(changed, tmp_path)
    message = str(refused.value)
    assert "model.d_model: 64 -> 32" in message and "data.max_bytes: 200000 -> 100000" in message
    assert "train.steps" not in message and "\n" not in message
    assert (tmp_path / "config.json").read_text() == saved  # a refused resume changes nothing
    capsys.readouterr()
    train.train(tiny_config(train=dict(steps=6, eval_every=4), optim=dict(learning_rate=1e-3)), tmp_path)
    out = capsys.readouterr().out
    assert "resuming with a changed optim.learning_rate: 0.003 -> 0.001" in out
    assert "resuming with a changed train.steps: 4 -> 6" in out


def test_a_run_from_before_a_config_key_existed_resumes_at_its_default(tmp_path):
    from flax_lm.workdir import resume_check
    saved = json.loads(tiny_config().to_json())
    del saved["data"]["packing"]  # written by a flax_lm that had no such key
    assert resume_check.check_config(tiny_config(), saved, tmp_path) == []
    with pytest.raises(UserError, match="data.packing: 'concat' -> 'segments'"):
        resume_check.check_config(tiny_config(data=dict(packing="segments")), saved, tmp_path)


def test_a_run_started_from_another_run_resumes(tmp_path, shakespeare):
    """init_from takes the source's architecture; a resume must keep it, not fall back to the
    recipe's shape (which is not the source's here: the default d_model is 256)."""
    train.train(tiny_config(train=dict(steps=2, eval_every=2)), tmp_path / "source")

    def started_from_source(steps):
        cfg = tiny_config(train=dict(steps=steps, eval_every=2, init_from=str(tmp_path / "source")))
        cfg.model.update(d_model=256, n_heads=4)
        return cfg

    train.train(started_from_source(2), tmp_path / "fine_tuned")
    train.train(started_from_source(4), tmp_path / "fine_tuned")
    run, state = run_lib.load_run(tmp_path / "fine_tuned")
    run.checkpointer.close()
    assert int(state.step) == 4 and state.params["wte"]["embedding"].shape == (512, 64)


def _poisoned_loader(bad_call: int):
    """load_batch, with the loss weights of its `bad_call`-th batch (0-based) set to NaN."""
    real, calls = length_buckets.load_batch, []

    def load_batch(*args, **kwargs):
        batch = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == bad_call + 1:
            batch = {**batch, "weights": np.full_like(batch["weights"], np.nan)}
        return batch
    return load_batch


@pytest.mark.parametrize("platform", ["cpu", "gpu"])  # a lax.cond on CPU, a select elsewhere
@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_nonfinite_step_changes_no_parameter(policy, platform, shakespeare, monkeypatch):
    monkeypatch.setattr(backends, "platform", lambda: platform)
    cfg = tiny_config(train=dict(nonfinite_policy=policy))
    cfg.parallel.update(data=1)
    model = build_model(cfg.model)
    tx = optim.make_optimizer(cfg.optim, cfg.train.steps, cfg.model.n_layers)
    from flax_lm.parallel import mesh as mesh_lib
    mesh = mesh_lib.make_mesh(cfg, jax.devices()[:1])
    _, shardings = state_shardings(model, tx, mesh, 0, cfg.model.max_len)
    state = create_state(model, tx, mesh, 0, cfg.model.max_len, shardings)
    step = jax.jit(make_train_step(model, get_task(cfg), tx, optim.learning_rate_schedule(cfg.optim, 20), 1, policy))
    tokens = jnp.arange(4 * 32).reshape(4, 32) % 512
    batch = {"inputs": tokens, "targets": tokens, "weights": jnp.ones((4, 32))}
    good, metrics = step(state, batch)
    assert int(metrics["nonfinite"]) == 0 and int(good.step) == 1
    bad, metrics = step(good, {**batch, "weights": batch["weights"].at[0, 0].set(jnp.nan)})
    assert int(metrics["nonfinite"]) == 1
    assert (int(bad.step), int(bad.skipped_steps)) == ((2, 1) if policy == "skip" else (1, 0))
    jax.tree.map(np.testing.assert_array_equal, (bad.params, bad.opt_state), (good.params, good.opt_state))


@pytest.mark.parametrize("finite", [True, False])
def test_the_kept_or_updated_state_is_the_same_on_every_platform(finite, monkeypatch):
    tx = optim.make_optimizer(tiny_config().optim, 20, 2)
    params = {"w": {"kernel": jnp.arange(6.0).reshape(2, 3)}, "b": {"bias": jnp.ones(3)}}
    grads = jax.tree.map(lambda x: x * 0.5 - 1, params)

    def update(p, s):
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    outs = {}
    for platform in ("cpu", "gpu"):
        step = jax.jit(lambda p, s: backends.for_platform(platform).update_if_finite(jnp.asarray(finite), update, p, s))
        outs[platform] = step(params, tx.init(params))
    jax.tree.map(np.testing.assert_array_equal, outs["cpu"], outs["gpu"])
    expected = update(params, tx.init(params)) if finite else (params, tx.init(params))
    jax.tree.map(np.testing.assert_allclose, outs["cpu"], expected)


def test_skip_policy_counts_and_reports_the_skipped_step(tmp_path, shakespeare, monkeypatch, capsys):
    monkeypatch.setattr(length_buckets, "load_batch", _poisoned_loader(bad_call=6))
    train.train(tiny_config(train=dict(steps=12, log_every=3, eval_every=12)), tmp_path)
    state, _ = _final(tiny_config(train=dict(steps=12)), tmp_path)
    assert int(state.step) == 12 and int(state.skipped_steps) == 1
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
    assert "1 step(s) skipped since the last report" in capsys.readouterr().out
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped_steps"] for r in logged if "train/skipped_steps" in r] == [0, 0, 1, 1]


def test_stop_policy_saves_the_last_good_state_and_a_resume_matches_a_clean_run(tmp_path, shakespeare,
                                                                                monkeypatch):
    cfg = tiny_config(train=dict(steps=10, checkpoint_every=4, eval_every=10, nonfinite_policy="stop"))
    train.train(cfg, tmp_path / "clean")
    with monkeypatch.context() as patch:
        patch.setattr(length_buckets, "load_batch", _poisoned_loader(bad_call=6))
        with pytest.raises(UserError, match="step 7: the loss or gradient norm is not finite; stopped .* "
                                            "checkpoint 6 in"):
            train.train(cfg, tmp_path / "halted")
    assert max(int(p.name) for p in (tmp_path / "halted" / "checkpoints").iterdir()) == 6
    train.train(cfg, tmp_path / "halted")  # the data are fine now: it goes on from step 6
    _assert_same_run(cfg, tmp_path / "clean", tmp_path / "halted")


def test_a_checkpoint_from_before_the_skipped_step_count_still_resumes(tmp_path, shakespeare, capsys):
    """Checkpoints written before TrainState had `skipped_steps` restore with it at 0."""
    cfg = tiny_config(train=dict(steps=8, checkpoint_every=4, eval_every=8, keep_checkpoints=5))
    train.train(cfg, tmp_path / "uninterrupted")
    train.train(cfg, tmp_path / "old")
    shutil.rmtree(tmp_path / "old" / "checkpoints" / "8")
    run = run_lib.setup(cfg, tmp_path / "old")
    state, data_state = run_lib.restore_or_init(run, 4)
    run.checkpointer.close()
    shutil.rmtree(tmp_path / "old" / "checkpoints" / "4")
    old_layout = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != "skipped_steps"}
    writer = Checkpointer(tmp_path / "old" / "checkpoints", save_every=1, keep=5, async_writes=False)
    writer.save(4, old_layout, data_state, force=True)
    writer.close()
    capsys.readouterr()
    train.train(cfg, tmp_path / "old")
    assert "resumed from step 4" in capsys.readouterr().out and not (tmp_path / "old" / UNREADABLE).exists()
    _assert_same_run(cfg, tmp_path / "uninterrupted", tmp_path / "old")


def test_same_config_seed_and_devices_give_bit_identical_parameters(tmp_path, shakespeare):
    """Deterministic mode on CPU is the default: nothing in a run depends on timing or threads."""
    cfg = tiny_config(model=dict(dropout=0.1), train=dict(steps=6, eval_every=6))
    train.train(cfg, tmp_path / "a")
    train.train(cfg, tmp_path / "b")
    _assert_same_run(cfg, tmp_path / "a", tmp_path / "b")
