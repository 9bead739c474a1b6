"""Training end to end on real text: loss falls, resume is exact, accumulation and bf16 hold."""

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import tiny_config

from flax_lm.workdir import run as run_lib
from flax_lm.training import train
from flax_lm.models import build_model
from flax_lm.training.state_init import create_state, state_shardings
from flax_lm.tasks import get_task
from flax_lm.training.train_step import make_train_step


def _metrics(workdir, prefix):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[prefix + "loss"]) for r in rows if prefix + "loss" in r]


def _final_params(cfg, workdir):
    run = run_lib.setup(cfg, workdir)
    state, data_state = run_lib.restore_or_init(run)
    run.checkpointer.close()
    return jax.device_get(state), data_state


def test_loss_falls_on_shakespeare(tmp_path, shakespeare):
    cfg = tiny_config(train=dict(steps=60, eval_every=30))
    final = train.train(cfg, tmp_path)
    losses = _metrics(tmp_path, "train/")
    assert losses[0][1] > 5.5  # about ln(512) = 6.2 at the start
    assert losses[-1][1] < losses[0][1] - 0.8
    assert final["loss"] < 5.3
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "config.json").is_file()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_after_a_crash_is_bit_identical(tmp_path, shakespeare):
    cfg = tiny_config(train=dict(steps=8, checkpoint_every=4, eval_every=4, keep_checkpoints=5))
    train.train(cfg, tmp_path / "once")
    train.train(cfg, tmp_path / "twice")
    # A crash right after step 4's checkpoint: step 8 never happened.
    shutil.rmtree(tmp_path / "twice" / "checkpoints" / "8")
    train.train(cfg, tmp_path / "twice")
    once, once_data = _final_params(cfg, tmp_path / "once")
    twice, twice_data = _final_params(cfg, tmp_path / "twice")
    assert int(once.step) == int(twice.step) == 8 and once_data == twice_data
    jax.tree.map(np.testing.assert_array_equal, once, twice)


def test_grad_accumulation_equals_one_larger_batch(shakespeare):
    cfg = tiny_config(model=dict(dropout=0.0))
    model = build_model(cfg.model)
    from flax_lm.parallel import mesh as mesh_lib
    from flax_lm.training import optim
    cfg.parallel.update(data=1)
    mesh = mesh_lib.make_mesh(cfg, jax.devices()[:1])
    schedule = optim.learning_rate_schedule(cfg.optim, cfg.train.steps)
    tx = optim.make_optimizer(cfg.optim, cfg.train.steps, cfg.model.n_layers)
    _, shardings = state_shardings(model, tx, mesh, 0, cfg.model.max_len)
    rng = np.random.RandomState(0)
    batch = {"inputs": rng.randint(0, 512, (8, 32)).astype(np.int32),
             "targets": rng.randint(0, 512, (8, 32)).astype(np.int32),
             "weights": (rng.rand(8, 32) > 0.2).astype(np.float32)}  # uneven weights per micro-batch
    results = []
    for k in (1, 4):
        state = create_state(model, tx, mesh, 0, cfg.model.max_len, shardings)
        step = jax.jit(make_train_step(model, get_task(cfg), tx, schedule, k))
        for _ in range(2):
            state, metrics = step(state, batch)
        results.append((jax.device_get(state.params), float(metrics["loss"])))
    (p1, l1), (p4, l4) = results
    assert l1 == pytest.approx(l4, rel=1e-6)
    # fp32 sums in another order; Adam rescales the tiny differences, hence atol 1e-5.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p1, p4)


def test_bf16_compute_tracks_fp32(tmp_path, shakespeare):
    losses = {}
    for dtype in ("float32", "bfloat16"):
        cfg = tiny_config(model=dict(dtype=dtype), train=dict(steps=30, eval_every=30))
        losses[dtype] = train.train(cfg, tmp_path / dtype)["loss"]
        curve = _metrics(tmp_path / dtype, "train/")
        assert curve[-1][1] < curve[0][1] - 0.5
    assert abs(losses["bfloat16"] - losses["float32"]) < 0.05 * losses["float32"]


def test_remat_trains_the_same_as_no_remat(tmp_path, shakespeare):
    losses = [train.train(tiny_config(model=dict(scan_layers=True, remat_policy=policy),
                                      train=dict(steps=6, eval_every=6)), tmp_path / policy)["loss"]
              for policy in ("none", "full")]
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)


def test_sharded_state_lives_on_all_devices(tmp_path, shakespeare):
    cfg = tiny_config(parallel=dict(data=2, fsdp=2, tensor=2), train=dict(steps=2, eval_every=2))
    train.train(cfg, tmp_path)
    state, _ = run_lib.restore_or_init(run_lib.setup(cfg, tmp_path))
    kernel = state.params["h_0"]["mlp"]["c_fc"]["kernel"]  # ("embed", "mlp") -> (fsdp, tensor)
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert len(kernel.sharding.device_set) == 8




def test_an_empty_sample_prompt_samples_from_the_start_of_a_text(tmp_path, shakespeare, capsys):
    """sample.prompt="" starts the end-of-run sample from the end-of-text token, as GPT-2 does."""
    train.train(tiny_config(train=dict(steps=2, eval_every=2), sample=dict(prompt="", max_new_tokens=4)), tmp_path)
    assert "sample:\n" in capsys.readouterr().out
