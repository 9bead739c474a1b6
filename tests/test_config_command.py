"""`flax-lm config`, the help of every key, overrides written with a space, and a config with
several problems reported whole: through the command line, as a user meets them."""

import pytest
from test_cli import flax_lm

from flax_lm.config import load as config, defaults
from flax_lm.errors import UserError


def test_every_key_has_one_line_of_help():
    """A key declared without help (or set as c.section.key = value) would list with none."""
    names, help_of = config.all_keys(defaults.get_config()), defaults.schema().key_help()
    assert sorted(names) == sorted(help_of)
    assert all(help_of[n].strip() and "\n" not in help_of[n] for n in names), [n for n in names if not help_of[n]]


def test_config_prints_the_resolved_config_with_what_differs_from_the_defaults():
    result = flax_lm("config", "--config", "gpt2_tiny", "--config.train.steps=60", "--config.sample.prompt=Once ")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(config.all_keys(defaults.get_config()))
    assert "train.steps = 60  # default 300" in lines
    assert "sample.prompt = 'Once '  # default 'def '" in lines
    assert "train.seed = 0" in lines   # a default value, unmarked
    # what it prints is what a run loads
    cfg = config.load("gpt2_tiny", ["--config.train.steps=60"])
    assert f"model.d_model = {cfg.model.d_model}  # default 256" in lines


def test_config_keys_lists_type_value_default_and_help():
    result = flax_lm("config", "--keys", "warmup")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["optim.warmup_steps", "int", "30", *defaults.schema().key_help()["optim.warmup_steps"]
                                     .split(), "[safe", "on", "resume]"]
    recipe = flax_lm("config", "--config", "gpt2_tiny", "--keys", "optim.*")
    rows = recipe.stdout.splitlines()
    assert [r.split()[0] for r in rows] == [n for n in config.all_keys(defaults.get_config())
                                            if n.startswith("optim.")]
    rate = next(r for r in rows if r.startswith("optim.learning_rate"))
    assert "float" in rate and "0.003 (default 0.001)" in rate and "peak, after warmup" in rate


@pytest.mark.parametrize("args, message", [
    (["config", "--keys", "wrmup"], "--keys 'wrmup': no config key matches; did you mean 'optim.warmup_steps'?"),
    (["config", "--config", "no_such"], "--config: no config file 'no_such'"),
    (["config", "--config.train.stepz=3"], "unknown config key 'train.stepz'; did you mean 'train.steps'?"),
    (["train", "--config", "gpt2_tiny", "--config.train.steps", "60", "--workdir", "W"],
     "--config.train.steps: write --config.train.steps=60 (an override takes '=', not a space)"),
    (["config", "--config", "gpt2_tiny", "--config.train.steps"],
     "--config.train.steps: write --config.train.steps=VALUE"),
])
def test_config_mistakes_are_one_line(tmp_path, args, message):
    result = flax_lm(*[str(tmp_path / a) if a == "W" else a for a in args])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "W").exists()


def test_train_help_points_at_the_config_command():
    result = flax_lm("train", "--help")
    assert result.returncode == 0
    assert "flax-lm config --keys PATTERN" in " ".join(result.stdout.split())


def test_every_problem_of_a_config_is_a_line_of_one_error(tmp_path):
    """A short fine-tune used to take one try per problem; now the user sees them all at once."""
    result = flax_lm("train", "--config", "gpt2_tiny", "--config.train.steps=20", "--config.optim.warmup_steps=30",
                     "--config.model.n_heads=0", "--config.model.dtype=float64", "--config.model.d_modle=8",
                     "--config.train.batch_size=12", "--config.train.grad_accum_steps=5",
                     "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"flax-lm train: error: {line}" for line in [
        "unknown config key 'model.d_modle'; did you mean 'model.d_model'?",
        "config key 'model.dtype' must be one of float32, bfloat16, float16; got 'float64'",
        "config key 'model.n_heads' must be positive; got 0",
        "train.batch_size (12) must be divisible by train.grad_accum_steps (5)",
        "optim.warmup_steps (30) must be in [0, train.steps=20]",
    ]]
    assert not (tmp_path / "w").exists()


def test_problems_that_follow_from_a_bad_value_are_not_reported():
    """n_heads=0 is one problem; d_model % n_heads would be a division by zero, not a second one."""
    with pytest.raises(UserError) as e:
        config.load("gpt2_tiny", ["--config.model.n_heads=0", "--config.train.grad_accum_steps=0"])
    assert str(e.value).splitlines() == ["config key 'model.n_heads' must be positive; got 0",
                                         "config key 'train.grad_accum_steps' must be positive; got 0"]
