"""Config recipes, overrides and validation."""

from pathlib import Path

import pytest

from flax_lm.config import load as config
from flax_lm import models
from flax_lm.errors import UserError


RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_loads_and_validates(name):
    cfg = config.load(name)
    model = models.build_model(cfg.model, models.head_name(cfg))  # the family's config takes the recipe's values
    assert model.cfg.n_layers == cfg.model.n_layers


def test_the_recipes_are_found():
    assert {"gpt2_tiny", "bert_base", "t5_small", "llama_small", "sst2"} <= set(RECIPES)


def test_gpt2_small_is_the_124m_model():
    from flax_lm.models.gpt2 import GPT2Config, num_params
    cfg = config.load("gpt2_small")
    assert round(num_params(GPT2Config.from_config(cfg.model), include_positions=True) / 1e6) == 124


def test_overrides_parse_to_the_schema_types():
    cfg = config.load("gpt2_tiny", [
        "--config.train.steps=70", "--config.optim.learning_rate=1", "--config.model.scan_layers=true",
        "--config.data.source=a.txt,b.txt", "--config.optim.b2=0.99"])
    assert cfg.train.steps == 70
    assert cfg.optim.learning_rate == 1.0 and isinstance(cfg.optim.learning_rate, float)
    assert cfg.model.scan_layers is True
    assert cfg.data.source == "a.txt,b.txt"
    assert cfg.optim.b2 == 0.99


@pytest.mark.parametrize("override, message", [
    ("--config.model.d_modle=3", "unknown config key 'model.d_modle'; did you mean 'model.d_model'?"),
    ("--config.train.steps=1.5", "config key 'train.steps' must be int, got 1.5 (float)"),
    ("--config.model.scan_layers=maybe", "config key 'model.scan_layers' must be bool"),
    ("--config.train=3", "config key 'train' is a section, not a value"),
    ("--config.model.n_heads=5", "model.d_model (192) must be divisible by model.n_heads (5)"),
    ("--config.train.grad_accum_steps=5", "train.batch_size (32) must be divisible by train.grad_accum_steps (5)"),
    ("--config.model.dtype=float64", "config key 'model.dtype' must be one of"),
    ("--config.model.attention_dropout=0.1", "needs model.attention=reference"),
    ("--config.optim.warmup_steps=1000", "optim.warmup_steps (1000) must be in [0, train.steps=400]"),
    ("--config.model.remat_policy=some", "model.remat_policy must be one of"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=None) as e:
        config.load("gpt2_tiny", [override])
    assert message in str(e.value)


def test_a_recipe_cannot_add_keys(tmp_path):
    recipe = tmp_path / "bad.py"
    recipe.write_text("from flax_lm.config import defaults\n"
                      "def get_config():\n    c = defaults.get_config()\n    c.model.extra = 1\n    return c\n")
    with pytest.raises(UserError, match="unknown config key 'model.extra'"):
        config.load(str(recipe))


def test_missing_recipe_lists_the_known_ones():
    with pytest.raises(UserError, match="gpt2_tiny"):
        config.load("no_such_recipe")


def test_saved_json_round_trips():
    cfg = config.load("gpt2_tiny", ["--config.train.steps=90"])
    assert config.from_json(cfg.to_json()).to_dict() == cfg.to_dict()
