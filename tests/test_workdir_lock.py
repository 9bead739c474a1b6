"""One writer per workdir, through the command line: a second train is refused in one line and
touches nothing, readers are not blocked, the lock dies with kill -9, a stale lease is taken over."""

import json
import os
import signal
import socket
import time
from pathlib import Path

from test_cli import TINY, flax_lm

from bench import soak
from flax_lm.workdir.lock import LEASE


def _files(workdir):
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in workdir.rglob("*")}


def _wait_stopped(pid: int, timeout: float = 30.0) -> None:
    """Until the kernel has stopped every thread of `pid` (a signal is delivered asynchronously; an
    asynchronous checkpoint write may still be landing when send_signal returns)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[0]
                  for t in os.listdir(f"/proc/{pid}/task")}
        if states <= {"T", "t"}:
            time.sleep(0.2)  # writes the threads issued before stopping have reached the disk
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not stop")


def test_a_second_train_is_refused_and_the_lock_dies_with_kill_9(tmp_path):
    work = tmp_path / "run"
    same_command = soak.OVERRIDES + ["--config.train.steps=100000", "--config.train.checkpoint_every=5"]
    first = soak.Training(work, same_command)
    first.start()
    assert first.wait_until(lambda: first.latest_checkpoint() >= 5)
    first.process.send_signal(signal.SIGSTOP)  # frozen: its files stay as they are while the second tries
    _wait_stopped(first.process.pid)
    before = _files(work)
    second = flax_lm("train", "--config", "gpt2_tiny", *same_command, "--workdir", str(work), timeout=120)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"host {socket.gethostname()}, pid {first.process.pid}, since " in lines[0], lines
    assert _files(work) == before
    first.process.kill()  # kill -9, stopped as it is
    first.finish()
    assert (work / LEASE).exists()  # left behind, and the next run takes it at once
    again = flax_lm("train", *TINY, "--config.train.steps=3", "--workdir", str(tmp_path / "other"))
    assert again.returncode == 0, again.stderr
    resumed = soak.Training(work, soak.OVERRIDES + ["--config.train.steps=6", "--config.train.checkpoint_every=5"])
    resumed.start()
    done = resumed.finish()
    assert done.returncode == 0, done.stderr
    assert "took over" not in done.stdout and not (work / LEASE).exists()


def test_a_stale_lease_of_another_host_is_taken_over_with_a_note_and_a_fresh_one_refuses(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    lease = {"host": "worker-elsewhere", "pid": 4242, "token": "x", "since": "2026-01-01T00:00:00+00:00"}
    (work / LEASE).write_text(json.dumps({**lease, "heartbeat": time.time()}))
    fresh = flax_lm("train", *TINY, "--config.train.steps=2", "--workdir", str(work))
    assert fresh.returncode == 2 and "host worker-elsewhere, pid 4242" in fresh.stderr
    assert list(work.iterdir()) == [work / LEASE]
    (work / LEASE).write_text(json.dumps({**lease, "heartbeat": time.time() - 600}))
    stale = flax_lm("train", *TINY, "--config.train.steps=2", "--config.train.lock_stale_seconds=60",
                    "--workdir", str(work))
    assert stale.returncode == 0, stale.stderr
    assert "note: took over the workdir lock of host worker-elsewhere, pid 4242" in stale.stdout
