"""The stall watchdog of multi-process runs: it ends a process whose run stopped moving, with one
line and its own exit status, and leaves alone a run that has not finished its first step."""

import subprocess
import sys
import textwrap

from flax_lm.training import watchdog

SCRIPT = textwrap.dedent("""
    import time
    from flax_lm.training.watchdog import Watchdog
    with Watchdog(1.0) as dog:
        if {progress}:
            dog.progress()
        time.sleep(6)
    print("still here")
""")


def _run(progress: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(progress=progress)], capture_output=True, text=True,
                          timeout=120)


def test_a_stalled_run_ends_with_one_line_and_its_status():
    done = _run(progress=True)
    assert done.returncode == watchdog.LOST_PROCESS, done.stderr
    assert "still here" not in done.stdout
    lines = [line for line in done.stderr.splitlines() if line.startswith("flax-lm train: error:")]
    assert len(lines) == 1 and "train.watchdog_seconds=1" in lines[0], done.stderr


def test_the_first_step_is_not_timed():
    done = _run(progress=False)
    assert done.returncode == 0, done.stderr
    assert "still here" in done.stdout


def test_heartbeat_is_half_the_watchdog():
    assert watchdog.heartbeat_for(600) == 300
    assert watchdog.heartbeat_for(0) == 100
