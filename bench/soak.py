"""Kill -9 soak: one training run killed again and again (during asynchronous checkpoint
writes and at random moments), resumed each time, then compared bit for bit with the same
run left alone. Both runs are `flax-lm train` subprocesses with the same environment.

    python -m bench.soak [--steps 1000] [--kills 6] [--seed 0]
"""

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from bench.harness import add_row, machine, publish

TABLE_HEADING = "## Kill -9 soak (resume after crashes vs an uninterrupted run)"
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
# A small GPT-2 on Shakespeare that takes a few steps a second on a 2-core CPU.
OVERRIDES = ["--config.model.vocab_size=512", "--config.model.max_len=32", "--config.model.d_model=64",
             "--config.model.n_layers=2", "--config.model.n_heads=4", f"--config.data.source={SHAKESPEARE}",
             "--config.data.max_bytes=200000", "--config.train.batch_size=16", "--config.train.eval_batches=2",
             "--config.train.progress_bar=False", "--config.optim.learning_rate=0.003",
             "--config.optim.warmup_steps=2", "--config.sample.max_new_tokens=0"]


class Training:
    """`flax-lm train --config gpt2_tiny OVERRIDES` in a subprocess, watched through its workdir."""

    def __init__(self, workdir: Path, overrides: list[str]):
        self.workdir, self.overrides, self.process = Path(workdir), overrides, None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flax_lm.cli", "train", "--config", "gpt2_tiny", *self.overrides,
             "--workdir", str(self.workdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

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
            if self.process.poll() is not None:
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
        alive = progressed and self.process.poll() is None
        self.process.kill()
        self.finish()
        return alive

    def finish(self, timeout: float = 3600.0) -> subprocess.CompletedProcess:
        out, err = self.process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, out, err)


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
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    overrides = OVERRIDES + [f"--config.train.steps={args.steps}", "--config.train.checkpoint_every=10",
                             f"--config.train.eval_every={args.steps}"]
    rng = random.Random(args.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        reference = Training(Path(tmp) / "uninterrupted", overrides)
        reference.start()
        assert reference.finish().returncode == 0, "the uninterrupted run failed"
        run = Training(Path(tmp) / "interrupted", overrides)
        kills = [run.kill_after_progress(during_write=i % 2 == 0, delay=rng.uniform(0.0, 3.0))
                 for i in range(args.kills)]
        run.start()
        done = run.finish()
        assert done.returncode == 0, done.stderr
        same = bit_identical(final_state(reference.workdir), final_state(run.workdir))
    result = {"benchmark": "soak", "steps": args.steps, "kills": sum(kills),
              "kills_during_checkpoint_writes": sum(kills[0::2]), "bit_identical": same,
              "seconds": time.perf_counter() - start, **machine(),
              "command": "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:])}
    publish(result, args.json, None if args.no_record else record)
    return result


def record(r: dict) -> None:
    add_row(TABLE_HEADING, "| date | steps | kills (during checkpoint writes) | final state bit-identical | "
            "wall time | versions | command |\n| --- | --- | --- | --- | --- | --- | --- |",
            f"| {r['date']} | {r['steps']} | {r['kills']} ({r['kills_during_checkpoint_writes']}) | "
            f"**{r['bit_identical']}** | {r['seconds']:.0f} s | jax {r['versions']['jax']} | `{r['command']}` |")


if __name__ == "__main__":
    sys.exit(0 if main()["bit_identical"] else 1)
