"""Resuming a workdir whose config.json was written before its derived sizes were filled: both configs
are compared resolved, so the 0s it saved read as the sizes they stood for, and a real change is refused."""

import json

import pytest
from conftest import tiny_config

from flax_lm.errors import UserError
from flax_lm.training import train
from flax_lm.workdir import resume_check

OLD_ZEROS = {"d_ff": 0, "head_dim": 0, "n_kv_heads": 0, "n_decoder_layers": 0}   # as a config.json once held them


def _as_saved_before(workdir) -> dict:
    """Rewrites the workdir's config.json with the model sizes at 0, as flax_lm wrote it before resolve filled them."""
    path = workdir / "config.json"
    saved = json.loads(path.read_text())
    saved["model"].update(OLD_ZEROS)
    path.write_text(json.dumps(saved, indent=2))
    return saved


def test_a_config_saved_with_zero_sizes_matches_its_resolved_sizes():
    cfg = tiny_config(model=dict(family="llama", n_kv_heads=2))
    saved = json.loads(cfg.to_json())
    saved["model"].update(OLD_ZEROS)   # n_kv_heads 0 was n_heads, not this run's 2
    with pytest.raises(UserError, match=r"model.n_kv_heads: 4 -> 2"):
        resume_check.check_config(cfg, saved, "W")
    saved["model"]["n_kv_heads"] = 2
    assert resume_check.check_config(cfg, saved, "W") == []
    # the sizes a run states as numbers now are the same run as the 0s it saved
    explicit = tiny_config(model=dict(family="llama", n_kv_heads=2, d_ff=256, head_dim=16))
    assert resume_check.check_config(explicit, saved, "W") == []


def test_a_workdir_saved_with_zero_sizes_resumes_and_a_changed_d_ff_is_refused(tmp_path, shakespeare, capsys):
    train.train(tiny_config(train=dict(steps=2, checkpoint_every=2, eval_every=2)), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["d_ff"] == 256   # 4 * d_model, filled
    _as_saved_before(tmp_path)
    with pytest.raises(UserError, match=r"model.d_ff: 256 -> 128") as refused:
        train.train(tiny_config(model=dict(d_ff=128), train=dict(steps=4, eval_every=2)), tmp_path)
    assert "\n" not in str(refused.value)
    capsys.readouterr()
    train.train(tiny_config(train=dict(steps=4, eval_every=2)), tmp_path)
    out = capsys.readouterr().out
    assert "resumed from step 2" in out and "resuming with a changed train.steps: 2 -> 4" in out
    assert "model." not in out   # no model change reported: the saved 0s are the sizes they stood for
    assert json.loads((tmp_path / "config.json").read_text())["model"]["d_ff"] == 256   # saved anew, resolved
