"""`flax-lm compile`: the real train step of a config, compiled ahead of time for a TPU
topology on any machine that has libtpu (`pip install "jax[tpu]"`), no TPU needed.

The topology's devices come from `jax.experimental.topologies`; the mesh, shardings, model,
optimizer and step are the ones `train` builds, lowered with abstract arrays, so nothing is
allocated. XLA's own accounting gives the per-chip memory (`memory_analysis`) and FLOPs
(`cost_analysis`); the chip's HBM decides whether the config fits.
"""

import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from flax_lm import checkpointing, optim, sharding, state_init
from flax_lm import mesh as mesh_lib
from flax_lm.data import pipeline
from flax_lm.errors import UserError
from flax_lm.models import build_model, flops_per_token, head_name
from flax_lm.tasks import get_task
from flax_lm.train_step import jit_train_step

GIB = 2 ** 30
# HBM per chip, by the device kind libtpu reports.
HBM_BYTES = {"TPU v4": 32 * GIB, "TPU v5 lite": 16 * GIB, "TPU v5": 95 * GIB, "TPU v5p": 95 * GIB,
             "TPU v6 lite": 32 * GIB}
# How the TPU compiler words a program that needs more than the chip has: "... HLO temporaries (172.93G) ..."
_OUT_OF_HBM = re.compile(r"RESOURCE_EXHAUSTED: Ran out of memory.*?temporaries \(([\d.]+)G\)", re.S)
EXAMPLE_TOPOLOGIES = "v5e:2x2, v5e:4x4, v5p:2x2x1, v5p:4x4x4, v6e:2x2"


def topology_devices(name: str, num_slices: int = 1) -> list:
    """The devices of a TPU topology such as v5e:4x4 (num_slices of them for multi-slice)."""
    if importlib.util.find_spec("libtpu") is None:
        raise UserError("compiling for a TPU topology needs libtpu: pip install 'flax_lm[tpu]'")
    # Compiling touches no chip, so several processes may hold libtpu at once (a test and its subprocess).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies
        kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
        devices = list(topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs).devices)
    except Exception as e:  # libtpu reports an unknown name as a bare runtime error
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"--topology {name!r}: cannot make this TPU topology ({reason}); "
                        f"names look like {EXAMPLE_TOPOLOGIES}") from None
    if any(d.core_on_chip for d in devices):
        # libtpu describes v4 here core by core; meshes are built from one device per chip (megacore)
        raise UserError(f"--topology {name!r}: libtpu gives {len(devices)} cores, not one device per chip, "
                        f"which flax_lm's meshes need; names that work look like {EXAMPLE_TOPOLOGIES}")
    return devices


def batch_spec(cfg, mesh) -> dict:
    """Abstract arrays shaped as the task's global training batch (see lm_data.windows and
    mlm_data's batch), split over the data axes of `mesh`."""
    B, T = cfg.train.batch_size, pipeline.seq_len(cfg)
    if cfg.task == "causal_lm":
        shapes = {"inputs": ((B, T), jnp.int32), "targets": ((B, T), jnp.int32), "weights": ((B, T), jnp.float32)}
        if cfg.data.packing == "segments":   # packed documents kept apart: the attention masks by segment
            shapes.update(segment_ids=((B, T), jnp.int32), positions=((B, T), jnp.int32))
    elif cfg.task == "masked_lm":
        P = cfg.data.max_predictions or int(np.ceil(cfg.data.mask_prob * T))
        shapes = {"input_ids": ((B, T), jnp.int32), "token_type_ids": ((B, T), jnp.int32),
                  "attention_mask": ((B, T), jnp.int32), "masked_positions": ((B, P), jnp.int32),
                  "masked_ids": ((B, P), jnp.int32), "masked_weights": ((B, P), jnp.float32),
                  "weights": ((B,), jnp.float32)}
        if cfg.data.nsp:
            shapes["next_sentence_label"] = ((B,), jnp.int32)
    else:
        raise UserError(f"compile: task {cfg.task!r} is not supported; pre-training tasks are (causal_lm, masked_lm)")
    batch_sharding = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding) for k, (shape, dtype) in shapes.items()}


def compile_train_step(cfg, devices: list) -> dict:
    """Compiles the train step of `cfg` for `devices` and reports memory per chip, FLOPs and fit."""
    mesh = mesh_lib.make_mesh(cfg, devices)
    model = build_model(cfg.model, head_name(cfg))
    schedule = optim.learning_rate_schedule(cfg.optim, cfg.train.steps)
    tx = optim.make_optimizer(cfg.optim, cfg.train.steps, cfg.model.n_layers)
    abstract_state, shardings = state_init.state_shardings(model, tx, mesh, cfg.train.seed, cfg.model.max_len)
    state = checkpointing.abstract_with_shardings(abstract_state, shardings)
    step = jit_train_step(model, get_task(cfg), tx, schedule, cfg.train, mesh, shardings)
    kind = devices[0].device_kind
    report = {
        "device_kind": kind, "chips": len(devices), "mesh": dict(mesh.shape),
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_state.params))),
        "model_flops_per_step": flops_per_token(model.cfg, pipeline.seq_len(cfg)) * cfg.train.batch_size
        * pipeline.seq_len(cfg),
        "hbm_bytes": HBM_BYTES.get(kind), "scan_layers": cfg.model.scan_layers,
    }
    per_chip = {"parameters": _bytes_per_chip(state.params), "optimizer_state": _bytes_per_chip(state.opt_state)}
    try:
        with sharding.activate(mesh):
            compiled = step.lower(state, batch_spec(cfg, mesh)).compile()
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler itself refuses a program whose temporaries exceed the chip's HBM.
        needed = _OUT_OF_HBM.search(str(e))
        if needed is None:
            raise
        per_chip["temporaries"] = int(float(needed.group(1)) * GIB)
        report.update(per_chip_bytes=per_chip, step_flops_per_chip=None, fits=False,
                      per_chip_total_bytes=per_chip["parameters"] + per_chip["optimizer_state"]
                      + per_chip["temporaries"],
                      compile_error=str(e).strip().splitlines()[0][:300], suggestions=_suggestions(cfg, mesh))
        return report
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
    return report


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
    if r["step_flops_per_chip"] is None:
        lines.append(f"the TPU compiler refused it: {r['compile_error']}")
    else:
        # XLA's cost analysis counts a loop's body once, so a scan over the layers shows one layer
        counted = ", the scanned layers counted once" if r["scan_layers"] else ""
        lines.append(f"step FLOPs per chip {r['step_flops_per_chip']:.3e} (XLA's count{counted}; model FLOPs "
                     f"per step, all chips: {r['model_flops_per_step']:.3e})")
    if r["fits"] is None:
        lines.append(f"no HBM size known for {r['device_kind']}")
    else:
        verdict = "fits" if r["fits"] else "does NOT fit"
        lines.append(f"{verdict} in {r['hbm_bytes'] / GIB:.0f} GiB of HBM per chip")
    lines += [f"  try: {s}" for s in r["suggestions"]]
    return "\n".join(lines)
