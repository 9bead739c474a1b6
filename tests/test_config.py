"""Config recipes, overrides and validation."""

import json
import math
from pathlib import Path

import pytest

from flax_lm.config import defaults, load as config, resolve
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


# The model keys each recipe resolved to before the families owned their defaults (the values the
# recipes then spelt out): the family blocks must give every recipe the same config.
FAMILY_VALUES = {"gpt2": (1e-5, 0.02, True), "bert": (1e-12, 0.02, True), "t5": (1e-6, 1.0, True),
                 "llama": (1e-5, 0.02, False), "qwen3": (1e-6, 0.02, True),
                 "modernbert": (1e-5, 0.02, True), "elmo": (1e-5, 0.02, True)}


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_gets_its_family_values(name):
    m = config.load(name).model
    assert (m.layer_norm_epsilon, m.initializer_range, m.tie_word_embeddings) == FAMILY_VALUES[m.family]
    assert m.rope_theta == (160000.0 if m.family == "modernbert" else 10000.0)   # ModernBERT's global layers


def test_a_family_chosen_by_override_brings_its_defaults():
    """A T5 run that does not set initializer_range gets T5's 1.0, not GPT-2's 0.02."""
    m = config.load("gpt2_tiny", ["--config.task=span_corruption", "--config.model.family=t5"]).model
    assert (m.layer_norm_epsilon, m.initializer_range) == (1e-6, 1.0)
    assert config.load(None, ["--config.model.family=llama"]).model.tie_word_embeddings is False


def test_a_family_key_set_by_override_or_recipe_stays(tmp_path):
    """Even at the schema's own default value: set is set."""
    m = config.load("bert_tiny", ["--config.model.layer_norm_epsilon=1e-5"]).model
    assert m.layer_norm_epsilon == 1e-5
    recipe = tmp_path / "bert_eps.py"
    recipe.write_text("from flax_lm.config import defaults\n"
                      "def get_config():\n    c = defaults.get_config()\n    c.task = 'masked_lm'\n"
                      "    c.model.update(family='bert', layer_norm_epsilon=1e-5)\n    return c\n")
    assert config.load(str(recipe)).model.layer_norm_epsilon == 1e-5
    assert config.load(str(recipe), ["--config.model.family=t5", "--config.task=span_corruption"]
                       ).model.initializer_range == 1.0


def test_the_schema_states_each_key_once():
    keys = defaults.schema()
    assert sorted(keys) == sorted(config.all_keys(defaults.get_config()))
    assert keys["model.d_model"].architecture and not keys["model.dropout"].architecture
    assert keys["optim.learning_rate"].safe_on_resume and not keys["model.d_model"].safe_on_resume
    assert keys["sample.top_k"].safe_on_resume and keys["parallel.fsdp"].safe_on_resume
    for name in defaults.schema().family_owned():
        assert name in keys


@pytest.mark.parametrize("override, message", [
    ("--config.data.mask_prob=1.5", "config key 'data.mask_prob' must be in (0, 1); got 1.5"),
    ("--config.optim.layer_decay=0.0", "config key 'optim.layer_decay' must be in (0, 1]; got 0.0"),
    ("--config.optim.learning_rate=0.0", "config key 'optim.learning_rate' must be positive; got 0.0"),
    ("--config.model.head_dim=-1", "config key 'model.head_dim' must be >= 0; got -1"),
    ("--config.model.attention=fast", "model.attention must be one of"),
])
def test_ranges_and_choices_come_from_the_schema(override, message):
    with pytest.raises(UserError) as e:
        config.load("gpt2_tiny", [override])
    assert message in str(e.value)


def test_a_recipe_may_rebuild_a_saved_config(tmp_path):
    # A recipe that returns a saved config (from_json) runs while the family's keys are unset
    # placeholders; their saved values must still be read as the schema's types.
    saved = config.load("bert_tiny", ["--config.model.layer_norm_epsilon=1e-7"])
    recipe = tmp_path / "saved.py"
    recipe.write_text("from flax_lm.config import load as config\n\n\ndef get_config():\n"
                      f"    return config.from_json({saved.to_json()!r})\n")
    assert config.load(str(recipe)).to_dict() == saved.to_dict()


def test_a_resolved_config_has_no_derived_value_left_and_is_locked():
    cfg = config.load("bert_tiny", ["--config.task=classification", "--config.data.train=a.csv",
                                     "--config.data.validation=b.csv", "--config.model.d_ff=0"])
    bert_has = [n for n in resolve.DERIVED if n.startswith("data.") or n[6:] in defaults.schema().derived_sizes("bert")]
    assert "model.d_ff" in bert_has and "model.head_dim" not in bert_has
    assert all(cfg[name] == 0 for name in resolve.DERIVED) and cfg.model.num_labels == 0
    resolved = resolve.resolve(cfg, label_count=3)
    assert all(resolved[name] for name in bert_has) and resolved.model.num_labels == 3
    assert resolved.model.d_ff == 4 * cfg.model.d_model
    assert resolved.data.seq_len == cfg.model.max_len and resolved.data.target_len == cfg.model.max_len
    assert resolved.data.max_predictions == math.ceil(cfg.data.mask_prob * cfg.model.max_len)
    assert cfg.data.seq_len == 0   # the config given is left as it was
    with pytest.raises(AttributeError, match="immutable"):
        resolved.model.num_labels = 4
    with pytest.raises(AttributeError, match="immutable"):
        resolved.data.seq_len = 16
    assert resolve.resolve(resolved).to_dict() == resolved.to_dict()   # resolving twice changes nothing


def test_resolve_takes_a_source_architecture_and_refuses_a_label_count_the_data_lacks():
    cfg = config.load("bert_tiny", ["--config.task=classification", "--config.model.num_labels=2",
                                     "--config.data.train=a.csv", "--config.data.validation=b.csv"])
    resolved = resolve.resolve(cfg, architecture={"max_len": 64, "d_model": 48})
    assert (resolved.model.max_len, resolved.model.d_model, resolved.data.seq_len) == (64, 48, 64)
    with pytest.raises(UserError, match="model.num_labels is 2 but the data has 3 labels"):
        resolve.resolve(cfg, label_count=3)


def test_resolve_fills_the_model_sizes_a_family_has_and_leaves_the_others():
    cfg = config.load(None, ["--config.model.family=t5", "--config.task=span_corruption", "--config.model.d_model=96",
                             "--config.model.n_heads=3", "--config.model.n_layers=5"])
    m = resolve.resolve(cfg).model
    assert (m.d_ff, m.head_dim, m.n_decoder_layers, m.n_kv_heads) == (384, 32, 5, 0)   # T5 has no kv heads
    llama = resolve.resolve(config.load(None, ["--config.model.family=llama", "--config.model.n_kv_heads=2",
                                               "--config.model.d_ff=100"])).model
    assert (llama.d_ff, llama.head_dim, llama.n_kv_heads, llama.n_decoder_layers) == (100, 64, 2, 0)


FAMILY_TASKS = {"gpt2": "causal_lm", "llama": "causal_lm", "qwen3": "causal_lm", "bert": "masked_lm",
                "modernbert": "masked_lm", "t5": "span_corruption", "elmo": "causal_lm"}


@pytest.mark.parametrize("family", sorted(FAMILY_TASKS))
def test_a_familys_model_has_the_sizes_its_resolved_config_states(family):
    """config.json states the real sizes: the model built from the resolved config has them, the model
    built from the unresolved one derives the same, and a size the family does not name is none its model reads."""
    from flax_lm import derived_sizes
    cfg = config.load(None, [f"--config.model.family={family}", f"--config.task={FAMILY_TASKS[family]}"])
    resolved = resolve.resolve(cfg)
    model_cfg = models.build_model(resolved.model, models.head_name(resolved)).cfg
    named = defaults.schema().derived_sizes(family)
    assert "d_ff" in named
    for name in named:
        assert cfg.model[name] == 0 and resolved.model[name] == getattr(model_cfg, name) > 0
    assert models.build_model(cfg.model, models.head_name(cfg)).cfg == model_cfg
    for name in set(derived_sizes.RULES) - set(named):
        other = resolved.to_dict()
        other["model"][name] = 2
        assert models.build_model(config.from_json(json.dumps(other)).model, models.head_name(cfg)).cfg == model_cfg
