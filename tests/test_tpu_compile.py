"""`flax-lm compile`: the real train step compiled for TPU topologies on this CPU machine,
single-host, multi-host and multi-slice, with per-chip memory, FLOPs, the fit verdict and the
modelled step; the cost model's corrections checked on probe programs compiled by libtpu."""

import json

import numpy as np
import pytest
from conftest import tiny_config
from test_cli import flax_lm

pytest.importorskip("libtpu", reason="TPU topologies need libtpu (pip install \"jax[tpu]\")")

from flax_lm.training import tpu_compile  # noqa: E402
from flax_lm.backends import tpu_cost, tpu_topology  # noqa: E402
from flax_lm.errors import UserError  # noqa: E402
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
    from flax_lm.ops import attention
    from flax_lm.parallel import mesh, sharding
    topology_mesh = mesh.make_mesh(tiny_config(), tpu_compile.topology_devices("v5e:2x2"))
    assert attention.resolve("auto") == "explicit"  # this CPU's choice
    with sharding.activate(topology_mesh):
        assert attention.resolve("auto") == "splash"


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
    for topology, message in (("v9z:2x2", "not a TPU topology name"), ("v5e-6", "v5p-8 and v4-8 count TensorCores"),
                              ("v4:2x2x1", "not one device per chip")):
        bad = flax_lm("compile", "--config", "gpt2_tiny", "--topology", topology)
        # libtpu logs its own lines first; ours is the last, and the only one
        assert bad.returncode == 2 and message in bad.stderr.splitlines()[-1], bad.stderr


@pytest.mark.parametrize("name, libtpu, chips", [
    ("v5e-8", "v5e:2x4", 8), ("v5litepod-8", "v5e:2x4", 8), ("v5e-4", "v5e:2x2", 4), ("v6e-8", "v6e:2x4", 8),
    ("v5p-8", "v5p:2x2x1", 4), ("v5p-128", "v5p:4x4x4", 64), ("V5E:2x4", "v5e:2x4", 8)])
def test_gcloud_and_maxtext_topology_names(name, libtpu, chips):
    assert tpu_topology.libtpu_name(name) == libtpu
    assert len(tpu_compile.topology_devices(name)) == chips


@pytest.mark.parametrize("name", ["v5p-7", "v5e-3", "v7x-8", "v5e", "tpu-8", "v5e:2xA"])
def test_an_unknown_topology_name_lists_the_accepted_forms(name):
    with pytest.raises(UserError, match="v5e-8 = v5litepod-8.*v5p-8 and v4-8 count TensorCores"):
        tpu_topology.libtpu_name(name)


def _one_chip():
    import jax
    return jax.sharding.SingleDeviceSharding(tpu_compile.topology_devices("v5e-4")[0])


def _matmuls(k: int, unroll):
    """The model of a scan of k identical 2048 x 4096 x 4096 bf16 matmuls on one v5e chip."""
    import jax
    import jax.numpy as jnp
    s = _one_chip()
    x = jax.ShapeDtypeStruct((2048, 4096), jnp.bfloat16, sharding=s)
    w = jax.ShapeDtypeStruct((k, 4096, 4096), jnp.bfloat16, sharding=s)
    step = jax.jit(lambda x, w: jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w, unroll=unroll)[0])
    return tpu_cost.model_step(step.lower(x, w).compile(), "TPU v5 lite")


def test_the_cost_model_counts_a_loop_body_once_and_unrolled_matmuls_k_times():
    looped, unrolled4, unrolled8 = _matmuls(8, 1), _matmuls(4, True), _matmuls(8, True)
    # the loop is found with its trip count; its body's matmul is counted once
    assert [loop["trip_count"] for loop in looped["loops"]] == [8]
    assert looped["flops"] == pytest.approx(2 * 2048 * 4096 * 4096, rel=0.01)
    assert unrolled8["loops"] == [] and unrolled8["flops"] == pytest.approx(8 * looped["flops"], rel=0.01)
    # unrolled, twice the matmuls model at twice the time, near v5e's 197 TFLOP/s roofline
    assert unrolled8["modeled_step_seconds"] / unrolled4["modeled_step_seconds"] == pytest.approx(2, rel=0.1)
    assert unrolled8["modeled_step_seconds"] == pytest.approx(unrolled8["roofline_seconds"], rel=0.2)


def test_rng_bit_generator_ops_are_added_back():
    import jax
    import jax.numpy as jnp
    x = jax.ShapeDtypeStruct((2048, 4096), jnp.bfloat16, sharding=_one_chip())
    dropout = jax.jit(lambda x: x * jax.random.bernoulli(jax.random.key(0, impl="rbg"), 0.5, x.shape))
    compiled = dropout.lower(x).compile()
    assert compiled.cost_analysis()["optimal_seconds"] < -0.5  # libtpu prices each such op at -1 s
    model = tpu_cost.model_step(compiled, "TPU v5 lite")
    assert model["minus_one_ops"] >= 1
    # corrected, it models near reading and writing the 16 MiB operand (and the mask) once
    assert 0 < model["modeled_step_seconds"] < 10 * model["roofline_seconds"]


def test_collective_bytes_count_each_all_gather_at_its_loops_trip_count():
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = jax.sharding.Mesh(np.array(tpu_compile.topology_devices("v5e-4")), ("x",))
    x = jax.ShapeDtypeStruct((4 * 1024, 1024), jnp.bfloat16, sharding=NamedSharding(mesh, P("x")))

    def gathered(x, k):
        def body(c, _):
            full = jax.lax.all_gather(c, "x", tiled=True)     # 4 x 2 MiB -> 8 MiB a chip
            return c + full[:1024] * 2, None
        return jax.lax.scan(body, x, None, length=k)[0]

    for k in (1, 3):
        step = jax.jit(jax.shard_map(lambda x: gathered(x, k), mesh=mesh, in_specs=P("x"), out_specs=P("x")))
        model = tpu_cost.model_step(step.lower(x).compile(), "TPU v5 lite")
        assert model["collective_bytes"] == k * 4 * 1024 * 1024 * 2


def test_compile_reports_the_modelled_step_and_the_batch(tmp_path):
    out = tmp_path / "report.json"
    done = flax_lm("compile", "--config", "gpt2_tiny", "--topology", "v5e-4", "--json", str(out),
                   "--config.train.batch_size=16", "--config.model.scan_layers=true")
    assert done.returncode == 0, done.stderr
    r = json.loads(out.read_text())
    assert "batch: 16 sequences of 128 tokens (4 per chip)" in done.stdout and "modelled step" in done.stdout
    tokens = r["modeled_tokens_per_second_per_chip"] * r["modeled_step_seconds"] * r["chips"]
    assert tokens == pytest.approx(16 * 128)
    peak = tpu_cost.CHIPS["TPU v5 lite"].peak_flops
    assert r["modeled_mfu"]["6N+12LHQT"] == pytest.approx(r["model_flops_per_step"] / 4 / r["modeled_step_seconds"]
                                                          / peak)
    assert r["modeled_mfu"]["6N+6LHQT_causal"] < r["modeled_mfu"]["6N+12LHQT"]
    # the scanned layers were measured unrolled: the modelled FLOPs are the whole step's, not one layer's
    assert r["modeled_flops_per_chip"] > 1.5 * r["step_flops_per_chip"]
    assert r["roofline_seconds"] <= r["modeled_step_seconds"] * 1.5 and r["bytes_accessed_per_chip"] > 0
    assert "method:" in done.stdout


def test_compile_exits_3_when_the_program_does_not_fit(tmp_path):
    done = flax_lm("compile", "--config", "gpt2_tiny", "--topology", "v5e-4", "--config.model.vocab_size=50257",
                   "--config.model.max_len=1024", "--config.data.seq_len=1024", "--config.model.d_model=768",
                   "--config.model.n_layers=12", "--config.model.n_heads=12", "--config.train.batch_size=256")
    assert done.returncode == 3, done.stderr
    assert "does NOT fit" in done.stdout and "batch: 256 sequences of 1024 tokens (64 per chip)" in done.stdout


@pytest.mark.parametrize("message, gib", [
    # the temporaries alone exceed the chip
    ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. Ran out of memory in memory "
     "space hbm. ... HLO temporaries (172.93G) ...", 172.93),
    # they fit, but not beside the arguments (gpt2_small on v5e:2x4, remat dots_no_batch, 2 micro-batches)
    ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. Ran out of memory in memory "
     "space hbm. Used 15.76G of 15.75G hbm. Exceeded hbm capacity by 9.67M.\n\nTotal hbm usage >= 16.01G:\n"
     "    reserved        258.00M \n    program          14.36G \n    arguments         1.39G \n\n"
     "Program hbm requirement 14.36G:\n    global           112.5K\n    scoped            1.23M\n"
     "    HLO temp         14.34G (74.4% utilization: Unpadded (9.20G) Padded (12.36G))", 14.34),
])
def test_both_wordings_of_the_compilers_out_of_memory_refusal_are_read(message, gib):
    assert tpu_compile.needed_temporaries(message) == int(gib * tpu_compile.GIB)
    assert tpu_compile.needed_temporaries("INTERNAL: something else") is None


def test_a_scanned_layers_model_models_the_same_step_as_the_same_model_unrolled():
    """The cost model counts a while loop's body once; the scanned layers are measured at their trip
    count (compiled unrolled), so scanning changes the modelled step by no more than a few percent.
    With the TPU's default loss (unchunked) no loop is left to be counted once."""
    devices = tpu_compile.topology_devices("v5e-4")
    scanned, unrolled = (tpu_compile.compile_train_step(tiny_config(model=dict(n_layers=4, scan_layers=scan),
                                                                    train=dict(batch_size=16)), devices)
                         for scan in (True, False))
    assert scanned["scan_layers"] and not unrolled["scan_layers"]
    assert scanned["modeled_step_seconds"] == pytest.approx(unrolled["modeled_step_seconds"], rel=0.03)
    assert scanned["modeled_flops_per_chip"] == pytest.approx(unrolled["modeled_flops_per_chip"], rel=0.03)
    assert scanned["loops_counted_once"] == [] == unrolled["loops_counted_once"]


def test_compile_builds_from_the_resolved_config_as_train_does():
    """The one build takes only a resolved config; compile resolves the config it is given first, so
    it compiles the run train would build (its sizes and lengths at 0 filled)."""
    from flax_lm.config.resolve import resolve
    from flax_lm.parallel import mesh
    from flax_lm.training.build import build
    cfg = tiny_config(model=dict(d_ff=0), data=dict(seq_len=0))
    devices = tpu_compile.topology_devices("v5e:2x2")
    with pytest.raises(TypeError, match="resolved"):
        build(cfg, mesh.make_mesh(cfg, devices), cfg.train.steps)
    report = tpu_compile.compile_train_step(cfg, devices, model_step=False)
    assert report["params"] == _params(resolve(cfg)) and resolve(cfg).model.d_ff == 256
    assert report["batch"]["seq_len"] == cfg.model.max_len
