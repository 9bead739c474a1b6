"""Training length: `train.steps`, or `train.epochs` over the training split (flax_lm.config.training_length)."""

import json
import math
import re

import pytest
from test_cli import TINY, flax_lm

from flax_lm.config import load as config
from flax_lm.errors import UserError

@pytest.mark.parametrize("overrides, message", [
    (["--config.train.epochs=2"], "train.steps (400) and train.epochs (2) are both set; set one of them to 0"),
    (["--config.train.steps=0"], "train.steps and train.epochs are both 0; set one of them"),
    (["--config.train.steps=0", "--config.train.epochs=-1"], "train.steps and train.epochs must be >= 0"),
])
def test_exactly_one_training_length(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.load("gpt2_tiny", overrides)


def test_epochs_with_a_long_warmup_validate_once_the_steps_are_known():
    cfg = config.load("gpt2_tiny", ["--config.train.steps=0", "--config.train.epochs=1.5",
                                    "--config.optim.warmup_steps=1000"])
    assert cfg.train.epochs == 1.5 and cfg.train.steps == 0


def _train_records(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train/learning_rate" in r]


def test_epochs_derive_the_steps_the_schedule_spans_and_resume_extends_them(tmp_path):
    """Windows of 16 tokens in batches of 8 (about 239 windows, 29 steps an epoch: the count depends on
    the BPE vocabulary the installed `tokenizers` learns); half an epoch is half of those steps,
    rounded up. The linear decay reaches 0 at the derived last step, and a resume with more epochs
    goes on there."""
    work = tmp_path / "run"
    args = [*TINY, "--config.data.max_bytes=6000", "--config.sample.max_new_tokens=0", "--config.train.log_every=1",
            "--config.optim.schedule=linear", "--config.optim.min_lr_ratio=0", "--config.train.steps=0",
            "--workdir", str(work)]
    half = flax_lm("train", *args, "--config.train.epochs=0.5")
    assert half.returncode == 0, half.stderr
    windows = int(re.search(r"data: (\d+) training sequences", half.stdout)[1])
    epoch = windows // 8
    steps = math.ceil(epoch / 2)
    assert f"train.epochs=0.5: {steps} steps ({epoch} an epoch: {windows} examples // train.batch_size 8)" \
        in half.stdout
    records = _train_records(work)
    assert records[-1]["step"] == steps
    before, last = records[-2]["train/learning_rate"], records[-1]["train/learning_rate"]
    assert last / (before - last) == pytest.approx(1.0, rel=1e-4)   # 0 one step on: at the last step

    whole = flax_lm("train", *args, "--config.train.epochs=1")
    assert whole.returncode == 0, whole.stderr
    assert "resuming with a changed train.epochs: 0.5 -> 1.0" in whole.stdout
    assert f"train.epochs=1: {epoch} steps" in whole.stdout and f"resumed from step {steps}" in whole.stdout
    assert _train_records(work)[-1]["step"] == epoch
    evaluated = flax_lm("evaluate", "--workdir", str(work))   # set up without the training split
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((work / "eval_validation.json").read_text())["step"] == epoch  # the full metrics


def test_a_warmup_longer_than_the_epochs_is_one_line(tmp_path):
    result = flax_lm("train", *TINY, "--config.data.max_bytes=6000", "--config.train.steps=0",
                     "--config.train.epochs=0.1", "--config.optim.warmup_steps=10", "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "optim.warmup_steps (10) is more than the 3 steps of train.epochs=0.1; lower it" in result.stderr
