"""Kill -9 soak: one training run killed again and again (during asynchronous checkpoint
writes and at random moments), resumed each time, then compared bit for bit with the same
run left alone. Both runs are `flax-lm train` subprocesses with the same environment.
With --processes 2, each run is two processes on localhost (2 CPU devices each); each kill
takes process 1, and the survivor must exit with watchdog.LOST_PROCESS and one line; the
slowest survivor's exit after a kill is reported.

    python -m bench.soak [--steps 1000] [--kills 6] [--seed 0] [--processes 1|2]
"""

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from bench.harness import add_row, machine, publish
from flax_lm.training import watchdog

TABLE_HEADING = "## Kill -9 soak (resume after crashes vs an uninterrupted run)"
TWO_PROCESS_HEADING = "## Two-process kill -9 soak (a lost process ends the run; resume vs an uninterrupted run)"
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
# A small GPT-2 on Shakespeare that takes a few steps a second on a 2-core CPU.
OVERRIDES = ["--config.model.vocab_size=512", "--config.model.max_len=32", "--config.model.d_model=64",
             "--config.model.n_layers=2", "--config.model.n_heads=4", f"--config.data.source={SHAKESPEARE}",
             "--config.data.max_bytes=200000", "--config.train.batch_size=16", "--config.train.eval_batches=2",
             "--config.train.progress_bar=False", "--config.optim.learning_rate=0.003",
             "--config.optim.warmup_steps=2", "--config.sample.max_new_tokens=0"]


WATCHDOG_SECONDS = 10  # of the two-process runs


class Training:
    """`flax-lm train --config gpt2_tiny OVERRIDES` in `processes` subprocesses (one run),
    watched through its workdir. `process` is the one that is killed (the last)."""

    def __init__(self, workdir: Path, overrides: list[str], processes: int = 1):
        self.workdir, self.overrides, self.processes = Path(workdir), overrides, processes
        self.procs, self.process = [], None
        self.survivor_exits = []  # (seconds from the kill to the survivors' exit, their statuses, one line each)

    def start(self) -> None:
        command = [sys.executable, "-m", "flax_lm.cli", "train", "--config", "gpt2_tiny", *self.overrides,
                   "--workdir", str(self.workdir)]
        if self.processes == 1:
            self.procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
        else:
            with socket.socket() as s:
                s.bind(("localhost", 0))
                port = s.getsockname()[1]
            env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
            self.procs = [subprocess.Popen(
                [*command, f"--config.train.watchdog_seconds={WATCHDOG_SECONDS}", "--coordinator",
                 f"localhost:{port}", "--num-processes", str(self.processes), "--process-id", str(i)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(self.processes)]
        self.process = self.procs[-1]

    def kill(self) -> None:
        """kill -9 `process`; with several processes, waits for the others and records their exit."""
        self.process.kill()
        killed_at = time.monotonic()
        survivors = self.procs[:-1]
        for p in survivors:
            p.wait(timeout=600)
        errs = [p.communicate()[1] for p in survivors]
        self.process.communicate()
        if survivors:
            one_line = all(sum(line.startswith("flax-lm train: error:") for line in e.splitlines()) == 1 for e in errs)
            self.survivor_exits.append((time.monotonic() - killed_at, [p.returncode for p in survivors], one_line))

    def latest_checkpoint(self) -> int:
        checkpoints = self.workdir / "checkpoints"
        steps = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.is_dir() else []
        return max(steps, default=0)

    def writing_checkpoint(self) -> bool:
        """Whether Orbax is in the middle of writing a step (its temporary directory exists)."""
        checkpoints = self.workdir / "checkpoints"
        return checkpoints.is_dir() and any("tmp" in p.name for p in checkpoints.iterdir())

    def wait_until(self, condition, timeout: float = 300.0) -> bool:
        """Waits for `condition`; False if the run ended first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if any(p.poll() is not None for p in self.procs):
                return False
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.workdir}: waited {timeout} s")
            time.sleep(0.005)
        return True

    def kill_after_progress(self, during_write: bool, delay: float) -> bool:
        """Starts (resumes) the run, waits until it saves a newer checkpoint, then kill -9 it
        `delay` seconds later or, with during_write, when a checkpoint write is under way.
        Returns whether the kill came before the run ended."""
        before = self.latest_checkpoint()
        self.start()
        progressed = self.wait_until(lambda: self.latest_checkpoint() > before)
        if progressed and during_write:
            progressed = self.wait_until(self.writing_checkpoint)
        elif progressed:
            time.sleep(delay)
        alive = progressed and all(p.poll() is None for p in self.procs)
        if alive:
            self.kill()
        else:
            for p in self.procs:
                p.kill()
            self.finish()
        return alive

    def finish(self, timeout: float = 3600.0) -> subprocess.CompletedProcess:
        """Waits for every process; the result of the first that failed, else of process 0."""
        results = []
        for p in self.procs:
            out, err = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        return next((r for r in results if r.returncode != 0), results[0])


def final_state(workdir: Path):
    """The train state of a finished run's latest checkpoint, on the host."""
    from flax_lm.workdir.run import load_run
    run, state = load_run(workdir)
    run.checkpointer.close()
    return jax.device_get(state)


def bit_identical(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=6, help="half of them during a checkpoint write")
    parser.add_argument("--seed", type=int, default=0, help="of the random kill moments")
    parser.add_argument("--processes", type=int, default=1, choices=(1, 2), help="of each run")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    overrides = OVERRIDES + [f"--config.train.steps={args.steps}", "--config.train.checkpoint_every=10",
                             f"--config.train.eval_every={args.steps}"]
    rng = random.Random(args.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        reference = Training(Path(tmp) / "uninterrupted", overrides, args.processes)
        reference.start()
        assert reference.finish().returncode == 0, "the uninterrupted run failed"
        run = Training(Path(tmp) / "interrupted", overrides, args.processes)
        kills = [run.kill_after_progress(during_write=i % 2 == 0, delay=rng.uniform(0.0, 3.0))
                 for i in range(args.kills)]
        run.start()
        done = run.finish()
        assert done.returncode == 0, done.stderr
        same = bit_identical(final_state(reference.workdir), final_state(run.workdir))
    exits = run.survivor_exits
    result = {"benchmark": "soak", "processes": args.processes, "steps": args.steps, "kills": sum(kills),
              "kills_during_checkpoint_writes": sum(kills[0::2]), "bit_identical": same,
              **({"watchdog_seconds": WATCHDOG_SECONDS, "slowest_survivor_exit_seconds": max(e[0] for e in exits),
                  "survivors_exited_lost_process_in_one_line": all(
                      set(e[1]) == {watchdog.LOST_PROCESS} and e[2] for e in exits)} if exits else {}),
              "seconds": time.perf_counter() - start, **machine(),
              "command": "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:])}
    publish(result, args.json, None if args.no_record else record)
    return result


def record(r: dict) -> None:
    if r["processes"] > 1:
        add_row(TWO_PROCESS_HEADING, "| date | steps | kills of process 1 (during checkpoint writes) | survivor exited "
                "LOST_PROCESS in one line, every time | slowest survivor exit after a kill (train.watchdog_seconds) | "
                "final state bit-identical | wall time | versions | command |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                f"| {r['date']} | {r['steps']} | {r['kills']} ({r['kills_during_checkpoint_writes']}) | "
                f"**{r['survivors_exited_lost_process_in_one_line']}** | {r['slowest_survivor_exit_seconds']:.1f} s "
                f"({r['watchdog_seconds']} s) | **{r['bit_identical']}** | {r['seconds']:.0f} s | "
                f"jax {r['versions']['jax']} | `{r['command']}` |")
        return
    add_row(TABLE_HEADING, "| date | steps | kills (during checkpoint writes) | final state bit-identical | "
            "wall time | versions | command |\n| --- | --- | --- | --- | --- | --- | --- |",
            f"| {r['date']} | {r['steps']} | {r['kills']} ({r['kills_during_checkpoint_writes']}) | "
            f"**{r['bit_identical']}** | {r['seconds']:.0f} s | jax {r['versions']['jax']} | `{r['command']}` |")


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["bit_identical"] and result.get("survivors_exited_lost_process_in_one_line", True) else 1)
