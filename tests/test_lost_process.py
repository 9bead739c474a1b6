"""A lost process ends a two-process run instead of hanging it: kill -9 one process during a step
or during an asynchronous checkpoint save, and the other exits non-zero within a bound derived from
train.watchdog_seconds, with one line naming the lost process; rerunning both resumes from the last
complete checkpoint and ends with the parameters of an uninterrupted run, bit for bit."""

import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, SHAKESPEARE, xla_flags

from flax_lm.training import watchdog

WATCHDOG_SECONDS = 10
# The survivor notices the loss when its next collective fails (gloo: the peer's connection is
# reset) or, where a collective blocks instead, when the watchdog fires; then it asks the
# coordination service who is alive (at most watchdog.ASK_SECONDS). The rest is slack for a
# loaded 2-core machine.
EXIT_BOUND_SECONDS = WATCHDOG_SECONDS + watchdog.ASK_SECONDS + 20
STEPS, CHECKPOINT_EVERY = 40, 5
OVERRIDES = ["--config", "gpt2_tiny", "--config.model.vocab_size=512", "--config.model.max_len=32",
             "--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
             f"--config.data.source={SHAKESPEARE}", "--config.data.max_bytes=100000",
             "--config.train.batch_size=8", "--config.train.eval_batches=1", "--config.train.progress_bar=False",
             "--config.sample.max_new_tokens=0", f"--config.train.steps={STEPS}",
             f"--config.train.checkpoint_every={CHECKPOINT_EVERY}", f"--config.train.eval_every={STEPS}",
             f"--config.train.watchdog_seconds={WATCHDOG_SECONDS}", "--config.train.async_checkpointing=True"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class TwoProcesses:
    """`flax-lm train` as processes 0 and 1 of one run on localhost, 2 CPU devices each."""

    def __init__(self, workdir):
        self.workdir, self.checkpoints = workdir, workdir / "checkpoints"
        port = _free_port()
        env = {**os.environ, "XLA_FLAGS": xla_flags(2), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "flax_lm.cli", "train", *OVERRIDES, "--workdir", str(workdir),
             "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]

    def entries(self) -> list[str]:
        return [p.name for p in self.checkpoints.iterdir()] if self.checkpoints.is_dir() else []

    def wait_until(self, condition, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert all(p.poll() is None for p in self.procs), "the run ended before the moment to kill it"
            assert time.monotonic() < deadline, f"waited {timeout} s"
            time.sleep(0.002)

    def finish(self, timeout: float = 180.0) -> list[subprocess.CompletedProcess]:
        try:
            outputs = [p.communicate(timeout=timeout) for p in self.procs]
        finally:
            for p in self.procs:
                p.kill()
        return [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(self.procs, outputs)]


def _params(workdir):
    from flax_lm.workdir.run import load_run
    run, state = load_run(workdir)
    run.checkpointer.close()
    return int(state.step), jax.device_get(state.params)


def _assert_equal_bit_for_bit(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    for done in TwoProcesses(workdir).finish():
        assert done.returncode == 0, done.stderr[-3000:]
    return _params(workdir)


@pytest.mark.parametrize("moment", ["step", "save"])
def test_a_process_killed_ends_the_run_in_one_line_and_the_rerun_resumes_bit_for_bit(tmp_path, uninterrupted, moment):
    run = TwoProcesses(tmp_path)
    # past the first complete checkpoint, so that there is one to resume from
    run.wait_until(lambda: any(n.isdigit() and int(n) >= 2 * CHECKPOINT_EVERY for n in run.entries()))
    if moment == "save":  # Orbax writes a step under a temporary name, renamed when complete
        run.wait_until(lambda: any("tmp" in n for n in run.entries()))
        assert any("tmp" in n for n in run.entries())
    run.procs[1].kill()
    killed_at = time.monotonic()
    survivor = run.procs[0]
    survivor.wait(timeout=EXIT_BOUND_SECONDS + 30)
    took = time.monotonic() - killed_at
    done = run.finish()[0]
    assert done.returncode == watchdog.LOST_PROCESS, done.stderr[-3000:]
    assert took < EXIT_BOUND_SECONDS, (took, done.stderr[-3000:])
    lines = [line for line in done.stderr.splitlines() if line.startswith("flax-lm train: error:")]
    assert len(lines) == 1 and "process 1 of 2 was lost" in lines[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]

    rerun = TwoProcesses(tmp_path).finish()
    for done in rerun:
        assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step" in rerun[0].stdout, rerun[0].stdout
    step, params = _params(tmp_path)
    assert step == uninterrupted[0] == STEPS
    _assert_equal_bit_for_bit(params, uninterrupted[1])


def test_the_coordinator_killed_ends_the_other_process_at_once(tmp_path):
    """Process 0 runs JAX's coordination service: without it, JAX's client aborts the others
    itself (a C++ message naming the leader task, and a stack trace), with no time to say more."""
    run = TwoProcesses(tmp_path)
    run.wait_until(lambda: any(n.isdigit() for n in run.entries()))
    run.procs[0].kill()
    killed_at = time.monotonic()
    run.procs[1].wait(timeout=EXIT_BOUND_SECONDS + 30)
    took = time.monotonic() - killed_at
    done = run.finish()[1]
    assert done.returncode != 0 and took < EXIT_BOUND_SECONDS, (done.returncode, took, done.stderr[-3000:])
    assert "leader task" in done.stderr, done.stderr[-3000:]
