"""`flax-lm compile`: the real train step of a config, compiled ahead of time for a TPU
topology on any machine that has libtpu (`pip install "jax[tpu]"`), no TPU needed.

The topology's devices come from `jax.experimental.topologies`; the model, optimizer, state
shardings and step come from the build `train` uses (flax_lm.training.build) for a mesh of those
devices, and the step is lowered with abstract arrays shaped as the task's batch (`Task.batch_spec`),
so nothing is allocated and every task compiles. XLA's own accounting gives the per-chip memory (`memory_analysis`) and FLOPs
(`cost_analysis`); the chip's HBM decides whether the config fits. The TPU compiler's cost model
gives the modelled step (flax_lm.backends.tpu_cost): time, tokens/s and MFU per chip.
"""

import re

import jax
import ml_collections
import numpy as np

from flax_lm.config.resolve import replaced, resolve
from flax_lm.workdir import checkpointing
from flax_lm.parallel import sharding
from flax_lm.backends import tpu_cost
from flax_lm.parallel import mesh as mesh_lib
from flax_lm.data import pipeline
from flax_lm.errors import UserError
from flax_lm.models import flops_per_token
from flax_lm.backends import tpu as tpu_backend
from flax_lm.training.build import build

GIB = tpu_cost.GIB
topology_devices = tpu_backend.topology_devices  # the devices `compile_train_step` compiles for
# How the TPU compiler words a program that needs more than the chip has: "... HLO temporaries (172.93G) ..."
# where the temporaries alone exceed it, "... Used 15.76G of 15.75G hbm ... HLO temp 14.34G ..." where they
# fit but not with the arguments beside them.
_OUT_OF_HBM = re.compile(r"RESOURCE_EXHAUSTED:.*?Ran out of memory.*?(?:temporaries \(([\d.]+)G\)|HLO temp\s+([\d.]+)G)",
                         re.S)


def needed_temporaries(message: str) -> int | None:
    """The bytes of temporaries a chip would need, from the TPU compiler's out-of-memory refusal
    (None: `message` is not one)."""
    found = _OUT_OF_HBM.search(message)
    return None if found is None else int(float(found.group(1) or found.group(2)) * GIB)
# Off while measuring: libtpu's collective matmuls are while loops, whose bodies its cost model counts once.
NO_COLLECTIVE_MATMUL_LOOPS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                              "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}
LABELLED_TASKS = ("classification", "token_classification")  # their heads' width comes from the data


def batch_spec(task, cfg, mesh) -> dict:
    """Abstract arrays shaped as the task's global training batch (`Task.batch_spec`), split over
    the data axes of `mesh`."""
    batch_sharding = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding)
            for k, x in task.batch_spec(cfg, cfg.train.batch_size).items()}


def compile_train_step(cfg, devices: list, model_step: bool = True) -> dict:
    """Compiles the train step of `cfg` (a validated config, resolved here as `train` resolves it) for
    `devices` and reports memory per chip, FLOPs, fit and (with `model_step`) the modelled step (see
    modeled_step)."""
    cfg = resolve(cfg)
    report, compiled = _compile(cfg, devices)
    if model_step and compiled is not None and tpu_cost.models_run_time(compiled):
        report.update(modeled_step(cfg, devices, report, compiled))
    return report


def modeled_step(cfg, devices: list, report: dict, compiled) -> dict:
    """The modelled step of `compiled` (cfg's step for `devices`): seconds, tokens/s and MFU per chip,
    the roofline bound, bytes moved and collective bytes per chip. A program with while loops is
    compiled again as measured_config(cfg) says, so that no loop body is counted once."""
    kind = devices[0].device_kind
    model = tpu_cost.model_step(compiled, kind)
    if any(loop["trip_count"] != 1 for loop in model["loops"]):
        _, measured = _compile(measured_config(cfg), devices, NO_COLLECTIVE_MATMUL_LOOPS)
        if measured is None:  # unrolled, the layers' temporaries no longer fit: the compiler priced nothing
            return {"modeled_step_seconds": None, "loops_counted_once": model["loops"]}
        model = tpu_cost.model_step(measured, kind)
    seconds, tokens = model.pop("modeled_step_seconds"), cfg.train.batch_size * pipeline.seq_len(cfg)
    chip, per_chip_flops = tpu_cost.CHIPS.get(kind), report["model_flops_per_step"] / len(devices)
    mfu = {} if chip is None else {
        "6N+12LHQT": per_chip_flops / seconds / chip.peak_flops,
        "6N+6LHQT_causal": report["model_flops_causal_per_step"] / len(devices)
        / seconds / chip.peak_flops}
    return {"modeled_step_seconds": seconds, "modeled_tokens_per_second_per_chip": tokens / len(devices) / seconds,
            "modeled_mfu": mfu, "roofline_seconds": model.pop("roofline_seconds"),
            "bytes_accessed_per_chip": model.pop("bytes_accessed"), "modeled_flops_per_chip": model.pop("flops"),
            "collective_bytes_per_chip": model.pop("collective_bytes"),
            "loops_counted_once": [loop for loop in model["loops"] if loop["trip_count"] != 1],
            "minus_one_ops": model["minus_one_ops"], "peak_flops": chip and chip.peak_flops,
            "hbm_bandwidth": chip and chip.hbm_bandwidth, "modeled_method": tpu_cost.METHOD}


def measured_config(cfg: ml_collections.FrozenConfigDict) -> ml_collections.FrozenConfigDict:
    """The resolved cfg with the loops flax_lm makes unrolled: the layers (scan_layers=False computes
    the same step with one parameter array per layer)."""
    return replaced(cfg, "model", scan_layers=False)


def _compile(cfg, devices: list, compiler_options: dict | None = None) -> tuple[dict, object]:
    """(report, compiled executable or None when the compiler refused it for lack of HBM)."""
    if cfg.task in LABELLED_TASKS and cfg.model.num_labels < 1:
        raise UserError(f"compile: a {cfg.task} run takes model.num_labels from its data, which compile does not "
                        f"read; set --config.model.num_labels=N (1 for a regression)")
    if cfg.parallel.strategy == "pmap":  # pmap's step is the jit step over a data-parallel mesh; compile that
        cfg = replaced(cfg, "parallel", strategy="jit")
    mesh = mesh_lib.make_mesh(cfg, devices)
    built = build(cfg, mesh, cfg.train.steps)
    abstract_state, model = built.abstract_state, built.model
    state = checkpointing.abstract_with_shardings(abstract_state, built.shardings)
    kind, B, T = devices[0].device_kind, cfg.train.batch_size, pipeline.seq_len(cfg)
    m = model.cfg
    attention_scores = 12 * m.n_layers * m.n_heads * getattr(m, "head_dim", m.d_model // m.n_heads) * T * B * T
    report = {
        "device_kind": kind, "chips": len(devices), "mesh": dict(mesh.shape),
        "batch": {"global_sequences": B, "sequences_per_chip": B / len(devices), "seq_len": T,
                  "grad_accum_steps": cfg.train.grad_accum_steps},
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_state.params))),
        "model_flops_per_step": flops_per_token(m, T) * B * T,
        "model_flops_causal_per_step": flops_per_token(m, T) * B * T - attention_scores / 2,
        "hbm_bytes": tpu_cost.CHIPS[kind].hbm_bytes if kind in tpu_cost.CHIPS else None,
        "scan_layers": cfg.model.scan_layers,
    }
    per_chip = {"parameters": _bytes_per_chip(state.params), "optimizer_state": _bytes_per_chip(state.opt_state)}
    try:
        with sharding.activate(mesh):
            compiled = built.train_steps.step.lower(state, batch_spec(built.task, cfg, mesh)).compile(
                compiler_options=compiler_options)
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler itself refuses a program whose temporaries exceed the chip's HBM.
        needed = needed_temporaries(str(e))
        if needed is None:
            raise
        per_chip["temporaries"] = needed
        report.update(per_chip_bytes=per_chip, step_flops_per_chip=None, fits=False,
                      per_chip_total_bytes=per_chip["parameters"] + per_chip["optimizer_state"]
                      + per_chip["temporaries"],
                      compile_error=str(e).strip().splitlines()[0][:300], suggestions=_suggestions(cfg, mesh))
        return report, None
    memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    per_chip.update(arguments=memory.argument_size_in_bytes, outputs=memory.output_size_in_bytes,
                    aliased=memory.alias_size_in_bytes, temporaries=memory.temp_size_in_bytes,
                    code=memory.generated_code_size_in_bytes)
    # donated state buffers are reused for the new state: arguments and outputs share them
    total = per_chip["arguments"] + per_chip["outputs"] - per_chip["aliased"] + per_chip["temporaries"] \
        + per_chip["code"]
    fits = None if report["hbm_bytes"] is None else total <= report["hbm_bytes"]
    report.update(per_chip_bytes=per_chip, per_chip_total_bytes=total, step_flops_per_chip=float(cost.get("flops", 0)),
                  fits=fits, suggestions=[] if fits is not False else _suggestions(cfg, mesh))
    return report, compiled


def _bytes_per_chip(tree) -> int:
    """Bytes one device holds of the arrays in `tree` (its shard of each)."""
    return int(sum(np.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))


def _suggestions(cfg, mesh) -> list[str]:
    out = []
    if cfg.model.remat_policy != "full":
        keep = " (or dots_no_batch, which keeps the matmul outputs)" if cfg.model.remat_policy == "none" else ""
        out.append(f"recompute activations in the backward pass: --config.model.remat_policy=full{keep}")
    replicas = mesh.shape["data"] * mesh.shape["fsdp"]
    if mesh.shape["fsdp"] < replicas:
        out.append(f"shard parameters and optimizer state over all {replicas} data-parallel chips: "
                   f"--config.parallel.fsdp={replicas} --config.parallel.data=1")
    if cfg.train.grad_accum_steps == 1:
        out.append("split each batch into micro-batches: --config.train.grad_accum_steps=4")
    out.append("or a topology with more chips")
    return out


def format_report(config_name: str, topology: str, r: dict) -> str:
    """The report as lines for a person."""
    m = r["per_chip_bytes"]
    lines = [f"{config_name} on {topology}: {r['chips']} x {r['device_kind']}, mesh {r['mesh']}, "
             f"{r['params'] / 1e6:,.1f}M parameters",
             f"per chip: parameters {m['parameters'] / GIB:.2f} GiB, optimizer state {m['optimizer_state'] / GIB:.2f} "
             f"GiB, temporaries (activations and workspace) {m['temporaries'] / GIB:.2f} GiB, "
             f"total {r['per_chip_total_bytes'] / GIB:.2f} GiB"]
    b = r["batch"]
    lines.append(f"batch: {b['global_sequences']} sequences of {b['seq_len']} tokens ({b['sequences_per_chip']:g} per chip"
                 + (f", {b['grad_accum_steps']} micro-batches" if b["grad_accum_steps"] > 1 else "") + ")")
    if r["step_flops_per_chip"] is None:
        lines.append(f"the TPU compiler refused it: {r['compile_error']}")
    else:
        # XLA's cost analysis counts a loop's body once, so a scan over the layers shows one layer
        counted = ", the scanned layers counted once" if r["scan_layers"] else ""
        lines.append(f"step FLOPs per chip {r['step_flops_per_chip']:.3e} (XLA's count{counted}; model FLOPs "
                     f"per step, all chips: {r['model_flops_per_step']:.3e})")
    lines += _modeled_lines(r)
    if r["fits"] is None:
        lines.append(f"no HBM size known for {r['device_kind']}")
    else:
        verdict = "fits" if r["fits"] else "does NOT fit"
        lines.append(f"{verdict} in {r['hbm_bytes'] / GIB:.0f} GiB of HBM per chip")
    lines += [f"  try: {s}" for s in r["suggestions"]]
    return "\n".join(lines)


def _modeled_lines(r: dict) -> list[str]:
    """The modelled step as lines for a person (none when it was not modelled)."""
    if r.get("modeled_step_seconds") is None:
        return ["modelled step: not priced (the measured program did not compile)"] if "loops_counted_once" in r else []
    mfu = ", ".join(f"{v:.1%} ({name})" for name, v in r["modeled_mfu"].items())
    lines = [f"modelled step {r['modeled_step_seconds'] * 1e3:.1f} ms, "
             f"{r['modeled_tokens_per_second_per_chip']:,.0f} tokens/s per chip, MFU {mfu or 'unknown peak'}",
             f"  roofline bound {r['roofline_seconds'] * 1e3:.1f} ms (max of FLOPs / peak and bytes / HBM bandwidth); "
             f"per chip: {r['modeled_flops_per_chip']:.3e} FLOPs, {r['bytes_accessed_per_chip'] / 1e9:.1f} GB moved, "
             f"{r['collective_bytes_per_chip'] / 1e9:.2f} GB by collectives",
             f"  method: {r['modeled_method']}"]
    if r["loops_counted_once"]:
        trips = ", ".join(str(loop["trip_count"] or "unknown") for loop in r["loops_counted_once"])
        lines.append(f"  {len(r['loops_counted_once'])} while loop(s) left (trip counts {trips}), each body counted "
                     f"once: the modelled step is a lower bound")
    return lines
