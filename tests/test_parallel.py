"""Scale: every mesh trains as one device does, pmap data parallelism equals jit, two processes
equal one (and share checkpoints), explicit multi-slice layouts, and one-line errors for layouts
that cannot work."""

import functools
import json
import math
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, tiny_config, xla_flags
from jax.sharding import PartitionSpec as P
from test_cli import TINY

from flax_lm.parallel import distributed
from flax_lm.training import optim, train
from flax_lm.parallel import mesh as mesh_lib
from flax_lm.workdir import run as run_lib
from flax_lm.errors import UserError
from flax_lm.models import build_model
from flax_lm.training.state_init import create_state, state_shardings
from flax_lm.training.strategy import JitSteps, PmapSteps
from flax_lm.tasks import get_task

STEPS = 3
# fp32 sums grouped by other devices differ in their last bits. Adam's first steps divide each
# gradient by its own size, so a parameter whose gradient is rounding noise still moves by up to
# the learning rate: measured at most 8e-8 relative on the losses and 5e-6 absolute on parameters.
LOSS_RTOL = 1e-6
PARAM_TOL = dict(rtol=1e-4, atol=1e-5)

ONE_DEVICE = dict(data=1, fsdp=1, tensor=1)
MESHES = {
    "data=8": dict(data=8, fsdp=1, tensor=1),
    "fsdp=8": dict(data=1, fsdp=8, tensor=1),
    "fsdp=4,tensor=2": dict(data=1, fsdp=4, tensor=2),
    "data=2,fsdp=2,tensor=2": dict(data=2, fsdp=2, tensor=2),
}
# logical axes (the model's) -> mesh axes (sharding.LOGICAL_AXIS_RULES), for one of each kind
EXPECTED_SPECS = {
    "h_0/mlp/c_fc/kernel": P("fsdp", "tensor"),                # (embed, mlp)
    "h_0/attn/c_attn/kernel": P("fsdp", None, "tensor", None),  # (embed, qkv, heads, head_dim)
    "h_0/attn/c_proj/kernel": P("tensor", None, "fsdp"),        # (heads, head_dim, embed)
    "wte/embedding": P("tensor", "fsdp"),                       # (vocab, embed)
    "h_0/ln_1/scale": P("fsdp"),                                # (embed,)
}


def _batches() -> list[dict]:
    """STEPS global batches of 8 x 32 tokens with uneven weights, the same for every layout."""
    rng = np.random.RandomState(0)
    batches = []
    for _ in range(STEPS):
        inputs = rng.randint(0, 512, (8, 32)).astype(np.int32)
        batches.append({"inputs": inputs, "targets": (inputs * 7 + 3) % 512,  # a mapping there is to learn
                        "weights": (rng.rand(8, 32) > 0.2).astype(np.float32)})
    return batches


def _parts(parallel: dict):
    cfg = tiny_config(parallel=parallel, train=dict(batch_size=8))
    mesh = mesh_lib.make_mesh(cfg, jax.devices()[:math.prod(parallel[a] for a in ("data", "fsdp", "tensor"))])
    model = build_model(cfg.model)
    tx = optim.make_optimizer(cfg.optim, cfg.train.steps, cfg.model.n_layers)
    schedule = optim.learning_rate_schedule(cfg.optim, cfg.train.steps)
    _, shardings = state_shardings(model, tx, mesh, cfg.train.seed, cfg.model.max_len)
    return cfg, mesh, model, tx, schedule, shardings


@functools.cache
def _initial_state():
    """The step-0 state on one device, on the host: every layout starts from these values."""
    cfg, mesh, model, tx, _, shardings = _parts(ONE_DEVICE)
    return jax.device_get(create_state(model, tx, mesh, cfg.train.seed, cfg.model.max_len, shardings))


@functools.cache
def _train(layout: tuple, strategy: str = "jit"):
    """(losses, final host params, {param path: (sharding, shape)}) after STEPS steps on `layout`."""
    cfg, mesh, model, tx, schedule, shardings = _parts(dict(layout, strategy=strategy))
    kind = PmapSteps if strategy == "pmap" else JitSteps
    steps = kind(model, get_task(cfg), tx, schedule, cfg.train, mesh, shardings)
    state = steps.place(jax.device_put(_initial_state(), shardings))
    losses = []
    for batch in _batches():
        state, metrics = steps(state, batch)
        losses.append(float(metrics["loss"]))
    state = steps.global_state(state)
    placed = {jax.tree_util.keystr(path, simple=True, separator="/"): (x.sharding, x.shape)
              for path, x in jax.tree_util.tree_leaves_with_path(state.params)}
    return losses, jax.device_get(state.params), placed


def _layout(parallel: dict) -> tuple:
    return tuple(sorted(parallel.items()))


def _assert_same_training(a, b) -> None:
    (losses_a, params_a, _), (losses_b, params_b, _) = a, b
    np.testing.assert_allclose(losses_a, losses_b, rtol=LOSS_RTOL)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **PARAM_TOL), params_a, params_b)


@pytest.mark.parametrize("name", MESHES)
def test_every_mesh_trains_as_one_device_does(name):
    sizes = MESHES[name]
    result = _train(_layout(sizes))
    _assert_same_training(result, _train(_layout(ONE_DEVICE)))
    placed = result[2]
    for path, spec in EXPECTED_SPECS.items():
        sharding, shape = placed[path]
        assert sharding.spec == spec, path
        assert len(sharding.device_set) == 8
        # each named axis splits its dimension by that mesh axis's size
        split = tuple(dim // (sizes[axis] if axis else 1) for dim, axis in zip(shape, tuple(spec) + (None,) * 4))
        assert sharding.shard_shape(shape) == split, path


def test_pmap_data_parallelism_equals_jit():
    data8 = _layout(MESHES["data=8"])
    pmapped = _train(data8, "pmap")
    _assert_same_training(pmapped, _train(data8))
    # back in the jit layout: whole on each of the 8 devices
    sharding, _ = pmapped[2]["h_0/mlp/c_fc/kernel"]
    assert sharding.is_fully_replicated and len(sharding.device_set) == 8


def _final_state(cfg, workdir):
    run = run_lib.setup(cfg, workdir)
    state, _ = run_lib.restore_or_init(run)
    run.checkpointer.close()
    return jax.device_get(state)


def _rows(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _curve(rows: list[dict], key: str) -> dict[int, float]:
    """step -> the last value of `key` logged at that step."""
    return {r["step"]: r[key] for r in rows if key in r}


def test_pmap_training_loop_resumes_a_jit_checkpoint_and_writes_one_jit_reads(tmp_path, shakespeare):
    t = dict(steps=4, checkpoint_every=2, eval_every=2, keep_checkpoints=5, log_every=1)
    train.train(tiny_config(train=t), tmp_path / "jit")
    # the same run, resumed from the jit run's step-2 checkpoint under pmap (a safe config change)
    shutil.copytree(tmp_path / "jit", tmp_path / "mixed")
    shutil.rmtree(tmp_path / "mixed" / "checkpoints" / "4")
    pmap_cfg = tiny_config(train=t, parallel=dict(strategy="pmap"))
    final = train.train(pmap_cfg, tmp_path / "mixed")
    jit_rows, mixed_rows = _rows(tmp_path / "jit"), _rows(tmp_path / "mixed")
    for key in ("train/loss", "eval/loss"):
        jit_curve, mixed_curve = _curve(jit_rows, key), _curve(mixed_rows, key)
        assert sorted(mixed_curve) == sorted(jit_curve)
        np.testing.assert_allclose([mixed_curve[s] for s in jit_curve], list(jit_curve.values()), rtol=LOSS_RTOL)
    assert final["loss"] == pytest.approx(_curve(jit_rows, "eval/loss")[4], rel=LOSS_RTOL)
    # pmap's step-4 checkpoint restores into the jit layout and holds what jit's holds
    jit_state, mixed_state = _final_state(pmap_cfg, tmp_path / "jit"), _final_state(pmap_cfg, tmp_path / "mixed")
    assert int(mixed_state.step) == int(jit_state.step) == 4
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **PARAM_TOL), mixed_state.params, jit_state.params)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(recipe, workdir, *overrides, devices_each: int = 4) -> list[str]:
    """`flax-lm train` as processes 0 and 1 of one run on localhost (each with `devices_each`
    CPU devices); returns their outputs."""
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": xla_flags(devices_each), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "flax_lm.cli", "train", "--config", str(recipe), "--workdir", str(workdir), *overrides,
         "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def test_two_processes_train_checkpoint_and_resume_as_one_process(tmp_path, shakespeare):
    cfg = tiny_config(train=dict(steps=6, log_every=1, eval_every=3, checkpoint_every=3),
                      optim=dict(schedule="constant"))  # the schedule is then the same for 3 and 6 steps
    recipe = tmp_path / "tiny.py"
    recipe.write_text(f"from flax_lm.config import load as config\n\n\ndef get_config():\n"
                      f"    return config.from_json({cfg.to_json()!r})\n")
    # 2 processes x 4 devices: 3 steps and a checkpoint both write, then a resume to step 6
    first = _two_processes(recipe, tmp_path / "two", "--config.train.steps=3")
    assert "joined the run as process 1 of 2" in first[1]
    second = _two_processes(recipe, tmp_path / "two")
    assert "resumed from step 3" in second[0] and "resumed" not in second[1]  # process 0 alone reports
    train.train(cfg, tmp_path / "one")  # 1 process x 8 devices, uninterrupted
    two, one = _rows(tmp_path / "two"), _rows(tmp_path / "one")
    # only process 0 logs: each step once
    assert [r["step"] for r in two if "train/loss" in r] == list(range(1, 7))
    for key in ("train/loss", "eval/loss"):
        np.testing.assert_allclose(list(_curve(two, key).values()), list(_curve(one, key).values()), rtol=LOSS_RTOL)
        assert list(_curve(two, key)) == list(_curve(one, key))
    # the checkpoint both processes wrote restores in one process and equals the one-process run's
    two_state, one_state = _final_state(cfg, tmp_path / "two"), _final_state(cfg, tmp_path / "one")
    assert int(two_state.step) == int(one_state.step) == 6
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **PARAM_TOL), two_state, one_state)


def test_distributed_settings_come_from_flags_or_environment():
    env = {distributed.ENV_COORDINATOR: "10.0.0.2:8476", distributed.ENV_NUM_PROCESSES: "4",
           distributed.ENV_PROCESS_ID: "3"}
    assert distributed._explicit_settings(None, None, None, env) == ("10.0.0.2:8476", 4, 3)
    assert distributed._explicit_settings("h:1", 2, 0, env) == ("h:1", 2, 0)  # flags win
    assert distributed._explicit_settings(None, None, None, {}) is None
    assert distributed.initialize(environ={}) is None  # no flags, no variables, no TPU: one process
    for flags, environ, message in (
            (("h:1", None, None), {}, "--num-processes, --process-id are missing"),
            ((None, None, None), {distributed.ENV_COORDINATOR: "h:1"}, "FLAX_LM_NUM_PROCESSES, FLAX_LM_PROCESS_ID"),
            (("h:1", 2, 2), {}, "--process-id must be in 0..1 for 2 processes; got 2"),
            (("h", 2, 0), {}, "give the coordinator as HOST:PORT"),
            ((None, None, None), {**env, distributed.ENV_NUM_PROCESSES: "four"}, "must be an integer")):
        with pytest.raises(UserError, match=message):
            distributed._explicit_settings(*flags, environ)


def _slices_spanned(mesh, axis: str) -> int:
    """How many slices one line of devices along `axis` crosses (the most of any line)."""
    index = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    lines = np.moveaxis(index, mesh.axis_names.index(axis), -1).reshape(-1, mesh.shape[axis])
    return max(len(set(line)) for line in lines)


def test_explicit_dcn_sizes_choose_the_axes_that_cross_slices():
    pytest.importorskip("libtpu", reason="TPU topologies need libtpu (pip install \"jax[tpu]\")")
    from flax_lm.training import tpu_compile
    devices = tpu_compile.topology_devices("v5e:2x2", num_slices=2)  # 2 slices of 4 chips
    layout = dict(data=2, fsdp=4, tensor=1)
    for dcn, data_spans, fsdp_spans in ((dict(), 2, 1),  # automatic: data crosses
                                        (dict(dcn_fsdp=2), 1, 2), (dict(dcn_data=1), 1, 2),
                                        (dict(dcn_data=2, dcn_fsdp=1), 2, 1)):
        mesh = mesh_lib.make_mesh(tiny_config(parallel=dict(layout, **dcn)), devices)
        assert (_slices_spanned(mesh, "data"), _slices_spanned(mesh, "fsdp")) == (data_spans, fsdp_spans), dcn
        assert _slices_spanned(mesh, "tensor") == 1
    # the train step compiles for the explicit layout (flax-lm compile --num-slices uses the same mesh)
    report = tpu_compile.compile_train_step(tiny_config(parallel=dict(layout, dcn_fsdp=2)), devices)
    assert report["mesh"] == layout and report["fits"] is True
    for dcn, message in ((dict(dcn_data=3), "3 does not divide the 2 slices"),
                         (dict(dcn_data=2, dcn_fsdp=2), "their product must be the number of slices, 2"),
                         (dict(dcn_data=1, dcn_fsdp=2, fsdp=1, data=8), r"parallel.fsdp \(1\) does not split")):
        with pytest.raises(UserError, match=message):
            mesh_lib.make_mesh(tiny_config(parallel=dict(layout, **dcn)), devices)


def test_impossible_layouts_are_one_line_each(tmp_path):
    """Each a `flax-lm` command a user could type, all started at once (each fails before training)."""
    cases = [
        (["--config.parallel.data=3", "--config.parallel.fsdp=2"], "use 6 devices; 8 are present"),
        (["--config.parallel.tensor=4"], "model.n_heads (2) must be divisible by parallel.tensor (4)"),
        (["--config.parallel.strategy=pmap", "--config.parallel.fsdp=2"], "needs parallel.fsdp=1"),
        (["--config.parallel.strategy=shard"], "'parallel.strategy' must be one of jit, pmap"),
        (["--config.parallel.dcn_data=2"], "the 8 devices form one slice"),
        (["--config.parallel.dcn_fsdp=-1"], "'parallel.dcn_fsdp' must be >= 0"),
        (["--coordinator", "localhost:1"], "needs --coordinator, --num-processes, --process-id together"),
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-m", "flax_lm.cli", "train", *TINY, *args,
                               "--workdir", str(tmp_path / str(i))],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, (args, _) in enumerate(cases)]
    for proc, (args, message) in zip(procs, cases):
        _, stderr = proc.communicate(timeout=120)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (args, stderr)


def test_an_explicit_sharding_mesh_is_refused_in_one_line():
    """jax.make_mesh makes AxisType.Explicit axes by default; the steps take Auto ones only."""
    from jax.sharding import AxisType

    from flax_lm.parallel import sharding
    explicit = jax.make_mesh((8, 1, 1), sharding.MESH_AXES, axis_types=(AxisType.Explicit,) * 3)
    with pytest.raises(UserError, match=r"mesh axes \['data', 'fsdp', 'tensor'\] are not AxisType.Auto"):
        with sharding.activate(explicit):
            pass
    auto = jax.make_mesh((8, 1, 1), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    with sharding.activate(auto):
        assert jax.sharding.get_abstract_mesh().axis_names == sharding.MESH_AXES
