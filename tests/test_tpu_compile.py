"""`flax-lm compile`: the real train step compiled for TPU topologies on this CPU machine,
single-host, multi-host and multi-slice, with per-chip memory, FLOPs and the fit verdict."""

import json

import numpy as np
import pytest
from conftest import tiny_config
from test_cli import flax_lm

pytest.importorskip("libtpu", reason="TPU topologies need libtpu (pip install \"jax[tpu]\")")

from flax_lm import tpu_compile  # noqa: E402
from flax_lm.models import build_model, head_name  # noqa: E402


def _params(cfg) -> int:
    import jax
    model = build_model(cfg.model, head_name(cfg))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))["params"]
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def test_a_single_host_topology_compiles_and_fits(tmp_path):
    cfg = tiny_config()
    report = tpu_compile.compile_train_step(cfg, tpu_compile.topology_devices("v5e:2x2"))
    assert (report["chips"], report["device_kind"], report["mesh"]["data"]) == (4, "TPU v5 lite", 4)
    m = report["per_chip_bytes"]
    # pure data parallelism: every chip holds all fp32 parameters and AdamW's two moments
    assert m["parameters"] == 4 * _params(cfg) == report["params"] * 4
    assert abs(m["optimizer_state"] - 2 * m["parameters"]) < 1024
    assert m["temporaries"] > 0 and report["step_flops_per_chip"] > 0
    assert report["fits"] is True and report["suggestions"] == []


def test_multi_host_and_multi_slice_topologies_shard_the_state():
    cfg = tiny_config(parallel=dict(data=1, fsdp=-1, tensor=2))
    devices = tpu_compile.topology_devices("v5e:4x4")  # 16 chips on 4 hosts
    assert len({d.process_index for d in devices}) == 4
    report = tpu_compile.compile_train_step(cfg, devices)
    assert report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 2}
    # parameters and moments are split over fsdp x tensor (a few small vectors stay whole)
    assert report["per_chip_bytes"]["parameters"] < 4 * report["params"] / 8
    sliced = tpu_compile.topology_devices("v5e:2x2", num_slices=2)
    assert sorted({d.slice_index for d in sliced}) == [0, 1]
    assert tpu_compile.compile_train_step(tiny_config(), sliced)["mesh"]["data"] == 8
    # two multi-host slices, FSDP across both: the mesh is built slice-aware (ICI within, DCN across)
    fsdp_only = tiny_config(parallel=dict(data=1, fsdp=-1), train=dict(batch_size=32))
    report = tpu_compile.compile_train_step(fsdp_only, tpu_compile.topology_devices("v5e:4x4", num_slices=2))
    assert report["mesh"] == {"data": 1, "fsdp": 32, "tensor": 1} and report["fits"] is True


def test_auto_attention_is_chosen_for_the_topology_not_for_this_machine():
    from flax_lm import attention, mesh, sharding
    topology_mesh = mesh.make_mesh(tiny_config(), tpu_compile.topology_devices("v5e:2x2"))
    assert attention.resolve("auto") == "explicit"  # this CPU's choice
    with sharding.activate(topology_mesh):
        assert attention.resolve("auto") == "xla"


@pytest.mark.parametrize("remat_policy", ["none", "dots_no_batch"])
def test_a_config_too_big_for_the_chips_is_reported_with_remedies(remat_policy):
    cfg = tiny_config(model=dict(vocab_size=50257, max_len=1024, d_model=768, n_layers=12, n_heads=12,
                                 remat_policy=remat_policy), train=dict(batch_size=256))
    report = tpu_compile.compile_train_step(cfg, tpu_compile.topology_devices("v5e:2x2"))
    assert report["fits"] is False and report["per_chip_total_bytes"] > report["hbm_bytes"]
    assert any("remat_policy=full" in s for s in report["suggestions"])
    assert any("parallel.fsdp=4" in s for s in report["suggestions"])


def test_compile_command_prints_the_report_and_refuses_a_bad_topology(tmp_path):
    out = tmp_path / "report.json"
    done = flax_lm("compile", "--config", "gpt2_tiny", "--topology", "v5p:2x2x1", "--json", str(out),
                   "--config.train.batch_size=8")
    assert done.returncode == 0, done.stderr
    assert "4 x TPU v5" in done.stdout and "fits in 95 GiB of HBM per chip" in done.stdout
    assert json.loads(out.read_text())["fits"] is True
    for topology, message in (("v9z:2x2", "cannot make this TPU topology"), ("v4:2x2x1", "not one device per chip")):
        bad = flax_lm("compile", "--config", "gpt2_tiny", "--topology", topology)
        # libtpu logs its own lines first; ours is the last, and the only one
        assert bad.returncode == 2 and message in bad.stderr.splitlines()[-1], bad.stderr
