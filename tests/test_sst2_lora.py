"""The sst2_lora recipe: configs/sst2.py's run with LoRA, and a LoRA classification run from a
headless pre-trained encoder that trains the adapters and the new classifier head only."""

import jax
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from test_cli import flax_lm  # noqa: E402
from test_interop import base_model_dir  # noqa: E402
from test_lora import _small_sst2, _state  # noqa: E402

from flax_lm.config import load  # noqa: E402
from flax_lm.models import lora  # noqa: E402


def test_the_recipe_is_sst2_with_lora_on_query_and_value():
    full, low = load.load("sst2", []), load.load("sst2_lora", [])
    assert (low.peft.method, low.peft.rank, low.peft.targets) == ("lora", 8, "query,value")
    assert low.optim.learning_rate > full.optim.learning_rate
    # everything a comparison holds equal is sst2's
    for section in ("data", "train", "model", "task"):
        assert low.to_dict()[section] == full.to_dict()[section], section


def _leaves(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def test_lora_from_a_headless_encoder_trains_the_adapters_and_the_head_only(tmp_path):
    src, _ = base_model_dir(tmp_path / "hf", "BertModel")  # a BertModel: no classifier to import
    work = tmp_path / "w"
    args = ["--config", "sst2_lora", f"--config.train.init_from={src}", "--config.data.seq_len=32",
            "--config.train.batch_size=8", "--config.train.steps=4", "--config.optim.warmup_steps=1",
            "--config.optim.learning_rate=1e-2", "--config.train.checkpoint_every=2",
            "--config.train.eval_every=2", "--config.train.keep_checkpoints=5", "--config.train.best_metric=",
            "--config.train.progress_bar=false", *_small_sst2(tmp_path)]
    done = flax_lm("train", *args, "--workdir", str(work))
    assert done.returncode == 0, done.stderr

    from flax_lm.workdir import run as run_lib
    start, _ = run_lib.restore_or_init(run_lib.setup(load.load("sst2_lora", args[2:]), tmp_path / "start"))
    start = jax.tree.map(np.asarray, jax.device_get(start))
    mid, end = _state(work, step=2), _state(work, step=4)
    base_start, _ = lora.split(start.params)
    base_end, adapters = lora.split(end.params)
    head = base_end.pop("classifier")
    base_start.pop("classifier")
    # the encoder, its pooler included, is the source's, bit for bit
    assert "pooler" in str(jax.tree_util.tree_structure(base_end))
    jax.tree.map(np.testing.assert_array_equal, base_end, base_start)
    # the adapters and the head moved; the head kept training after its first steps
    b_leaves = [x for p, x in jax.tree_util.tree_leaves_with_path(adapters) if "lora_b" in jax.tree_util.keystr(p)]
    assert b_leaves and all(np.any(b) for b in b_leaves)  # lora_b starts at zero
    assert not np.array_equal(head["kernel"], mid.params["classifier"]["kernel"])
    assert not np.array_equal(head["kernel"], start.params["classifier"]["kernel"])
    # Adam's two moments for the adapters and the head, none for the frozen encoder
    trained = _leaves(adapters) + _leaves(head)
    assert 2 * trained <= _leaves(end.opt_state) <= 2 * trained + 16
