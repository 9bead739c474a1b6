"""The command line as a user runs it: happy path and one-line errors."""

import glob
import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from flax_lm.backends import startup

TINY = ["--config", "gpt2_tiny", "--config.model.d_model=32", "--config.model.n_layers=1",
        "--config.model.n_heads=2", "--config.model.vocab_size=300", "--config.model.max_len=16",
        "--config.data.max_bytes=40000", "--config.train.batch_size=8", "--config.train.progress_bar=false",
        "--config.optim.warmup_steps=1", "--config.sample.max_new_tokens=8"]


def flax_lm(*args, timeout=300, env=None):
    # by default the environment conftest set: 8 CPU devices
    return subprocess.run([sys.executable, "-m", "flax_lm.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_train_resume_evaluate_generate(tmp_path):
    work = str(tmp_path / "run")
    done = flax_lm("train", *TINY, "--config.train.steps=4", "--config.train.eval_every=2", "--workdir", work)
    assert done.returncode == 0, done.stderr
    assert "validation loss" in done.stdout and "sample:" in done.stdout
    # saves every train.checkpoint_every (100) steps and at the end; none of the untrained first step
    assert _checkpoints(work) == [4]
    more = flax_lm("train", *TINY, "--config.train.steps=6", "--config.train.eval_every=2",
                   "--config.optim.warmup_steps=1", "--workdir", work)
    assert more.returncode == 0, more.stderr
    assert "resumed from step 4" in more.stdout
    assert _checkpoints(work) == [4, 6]
    again = flax_lm("train", *TINY, "--config.train.steps=6", "--workdir", work)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines() == [
        f"{work} is already at step 6, its last (train.steps=6); nothing to do. To train on, rerun with "
        f"--config.train.steps=N for an N above 6"]
    ev = flax_lm("evaluate", "--workdir", work)
    assert ev.returncode == 0, ev.stderr
    summary, where = ev.stdout.strip().splitlines()[-2:]
    assert where == f"all metrics (JSON) in {work}/eval_validation.json"
    result = json.loads((tmp_path / "run" / "eval_validation.json").read_text())
    # the count of windows depends on the BPE vocabulary that the installed `tokenizers` learns
    assert result["step"] == 6 and result["loss"] > 0 and result["examples"] > 0
    assert summary.startswith("step 6, validation: loss ") and f", examples {result['examples']}, perplexity " \
        in summary, summary
    gen = flax_lm("generate", "--workdir", work, "--prompt", "def ", "--max-new-tokens", "5", "--temperature", "0")
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("def ")
    missing = flax_lm("evaluate", "--workdir", work, "--step", "3")
    assert missing.returncode == 2 and "no such checkpoint" in missing.stderr
    exported = flax_lm("export", "--workdir", work, "--out", str(tmp_path / "hf"))
    assert exported.returncode == 0, exported.stderr
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hf").iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~umask}, modes


def _checkpoints(workdir) -> list[int]:
    return sorted(int(p.name) for p in (Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.parametrize("args, message", [
    (["--config.model.n_embd=8"], "unknown config key 'model.n_embd'"),
    (["--config.train.steps=ten"], "config key 'train.steps' must be int"),
    (["--config.data.source=/no/such/dir/*.txt"], "data.source: no file matches"),
    (["--config.train.batch_size=12"], "must be divisible by the 8 data-parallel devices"),
    (["--config.parallel.tensor=3"], "do not divide the 8 devices"),
    (["--config.parallel.tensor=2", "--config.model.vocab_size=301"], "of shape (301, 32) does not divide"),
    ([], "EMPTY"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, message):
    if message == "EMPTY":
        empty = tmp_path / "empty.txt"
        empty.write_text("\n\n")
        args, message = [f"--config.data.source={empty}"], "is empty"
    result = flax_lm("train", *TINY, *args, "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="the warnings are libtpu's (pip install jax[tpu])")
@pytest.mark.skipif(any(glob.glob(p) for p in startup.ACCELERATOR_DEVICE_FILES),
                    reason="this machine has accelerators: JAX's own choice of platform stands")
def test_a_cpu_user_with_libtpu_installed_sees_only_the_error(tmp_path):
    """As a user runs it, with no JAX_PLATFORMS: JAX starts (the mesh checks the batch against the
    devices) and libtpu, installed, must not print its TPU warnings."""
    user_env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    result = flax_lm("train", *TINY, "--config.train.batch_size=12", "--workdir", str(tmp_path / "w"), env=user_env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "flax-lm train: error: train.batch_size / train.grad_accum_steps = 12 sequences must be divisible by the 8 "
        "data-parallel devices (parallel.data=8 x parallel.fsdp=1)"], result.stderr


@pytest.mark.parametrize("command", [["train", *TINY], ["generate", "--prompt", "def "]])
def test_a_url_workdir_is_refused_in_one_line(command):
    """pathlib would make gs://bucket/run the local folder gs:/bucket/run (each host of a pod its own)."""
    result = flax_lm(*command, "--workdir", "gs://bucket/run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--workdir gs://bucket/run: a workdir is a local path, not a URL" in result.stderr


def test_a_url_workdir_is_refused_through_the_python_api_too():
    from conftest import tiny_config

    from flax_lm.training import train
    from flax_lm.errors import UserError
    with pytest.raises(UserError, match="a workdir is a local path, not a URL"):
        train.train(tiny_config(), "s3://bucket/run")


def test_evaluate_on_a_workdir_that_is_not_a_run(tmp_path):
    result = flax_lm("evaluate", "--workdir", str(tmp_path))
    assert result.returncode == 2 and "no config.json there" in result.stderr




def test_log_lines_print_above_the_progress_bar_not_inside_it(tmp_path):
    # Orbax warns (through absl) when a save waits for the previous one longer than a threshold; at 0
    # every save that waits at all warns, as saves at every step do
    main = ("import sys; from orbax.checkpoint import checkpoint_manager as m; "
            "m._WAIT_FOR_PREV_SAVE_WARNING_THRESHOLD_SECS = 0.0; from flax_lm.cli import main; sys.exit(main())")
    args = [a for a in TINY if "progress_bar" not in a]
    result = subprocess.run([sys.executable, "-c", main, "train", *args, "--config.train.steps=6",
                             "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=2",
                             "--config.train.eval_every=6", "--workdir", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.split("\n") if "Waiting for previous save" in line]
    assert warnings, result.stderr[-2000:]
    # tqdm.write clears the bar ("\r   \r") before the line; a plain log line would follow the bar's text
    assert not [line for line in warnings if "step/s" in line.split("\r")[-1]], warnings
