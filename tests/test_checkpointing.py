"""Checkpoint writes of the train loop: what a save costs the loop's thread, and a save that finds
the disk full."""

import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, SHAKESPEARE, xla_flags
from jax.sharding import NamedSharding, PartitionSpec

from flax_lm.workdir.checkpointing import Checkpointer
from flax_lm.training.train_state import TrainState


def test_a_save_in_one_process_copies_replicated_arrays_whole_and_compiles_nothing(tmp_path, caplog):
    """Orbax's replica-parallel saving would slice every replicated array once per device (and
    compile each slice); within one process it shares nothing, so saves take whole arrays."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    params = {"kernel": jax.device_put(jnp.arange(64.0).reshape(16, 4), replicated),
              "bias": jax.device_put(jnp.arange(16, dtype=jnp.int32), replicated),
              "rows": jax.device_put(jnp.ones((8, 3)), split)}
    state = TrainState.fresh(params, {"moment": params["kernel"] * 2}, jax.random.PRNGKey(0))
    checkpointer = Checkpointer(tmp_path, save_every=1, keep=2, async_writes=True)
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        checkpointer.save(1, state, {"position": 3}, force=True)
        checkpointer.wait()
    assert not [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored, data_state = checkpointer.restore(1, abstract)
    checkpointer.close()
    assert data_state == {"position": 3}
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    assert restored.params["rows"].sharding == split


FULL_DISK_RUN = ["--config", "gpt2_tiny", "--config.model.vocab_size=512", "--config.model.max_len=32",
                 "--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
                 f"--config.data.source={SHAKESPEARE}", "--config.data.max_bytes=100000",
                 "--config.train.batch_size=8", "--config.train.eval_batches=1", "--config.train.progress_bar=False",
                 "--config.sample.max_new_tokens=0", "--config.optim.warmup_steps=2", "--config.train.steps=60",
                 "--config.train.checkpoint_every=5", "--config.train.eval_every=60", "--config.train.log_every=60",
                 "--config.train.keep_checkpoints=100", "--config.train.async_checkpointing=True"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MB tmpfs (a few checkpoints of FULL_DISK_RUN's model, its config and tokenizer), and
    a function that grows it to 20 MB."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here ({mounted.stderr.strip() or mounted.returncode})")
    try:
        yield mount_point, lambda: subprocess.run(
            ["mount", "-o", "remount,size=20m", str(mount_point)], check=True)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def _train(workdir) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": xla_flags(2), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "flax_lm.cli", "train", *FULL_DISK_RUN, "--workdir", str(workdir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_save_that_finds_the_disk_full_stops_the_run_and_keeps_the_last_checkpoint(small_disk):
    disk, grow = small_disk
    workdir = disk / "run"
    full = _train(workdir)
    assert full.returncode == 2, full.stderr[-3000:]
    # tensorstore may still print "Event loop is closed" tracebacks of the failed save's other
    # writes, finishing after Orbax gave up on it (not ours to silence); the run's own word is one line
    lines = [line for line in full.stderr.splitlines() if line.startswith("flax-lm train:")]
    assert len(lines) == 1 and full.stderr.strip().endswith(lines[0]), full.stderr[-3000:]
    assert "No space left on device" not in full.stderr, full.stderr[-3000:]  # Orbax's own reports dropped
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert kept and kept[-1] < 60
    assert lines[0].startswith("flax-lm train: error: checkpoint ") and "no space left on device" in lines[0]
    assert f"checkpoint {kept[-1]} is complete and the run resumes from it" in lines[0], lines[0]
    # space freed: the same command resumes from the last complete checkpoint and finishes
    grow()
    resumed = _train(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {kept[-1]}" in resumed.stdout, resumed.stdout
    assert 60 in [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]


_UNRETRIEVED_TASK = """
import asyncio, errno, gc, logging, sys
import flax_lm.workdir.checkpointing
logging.basicConfig()

async def write(error):
    raise error

async def main():
    task = asyncio.ensure_future(write({error}))
    await asyncio.sleep(0)  # the task fails; nobody awaits it

asyncio.run(main())
gc.collect()  # asyncio logs "Task exception was never retrieved" as the task is freed
"""


@pytest.mark.parametrize("error, reported", [("OSError(errno.ENOSPC, 'No space left on device')", False),
                                             ("ValueError('a bug in a write')", True)])
def test_a_full_disk_in_a_write_nobody_awaits_is_not_reported_again_at_exit(error, reported):
    # the full-disk failure of a save's other fragments is reported by asyncio as the process exits,
    # after the run's one line; other failures still are
    done = subprocess.run([sys.executable, "-c", _UNRETRIEVED_TASK.format(error=error)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("Task exception was never retrieved" in done.stderr) == reported, done.stderr[-3000:]
