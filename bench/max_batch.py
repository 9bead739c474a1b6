"""The largest GPT-2 training batch that fits on one device: flax_lm under each remat policy
against transformers.GPT2LMHeadModel (PyTorch eager), same sequence length, dtype, AdamW.

    python -m bench max-batch --config gpt2_small --seq-len 1024 --dtype bfloat16 [--remat none,full]
        [--multiple 8] [--limit 4096] [--memory-gib G] [--json PATH] [--no-record] [--config.key=value ...]

A batch fits when one training step at it runs. flax_lm: XLA's memory analysis of the compiled
step, nearly affine in the batch, predicts the batch that fills the device (secant steps from two
small batches); that batch is run first, and the search moves from there until a step runs and one
`--multiple` more does not (JAX: RESOURCE_EXHAUSTED), so a GPU takes a few compilations per policy
rather than a dozen. PyTorch: doubling from `--multiple`, then bisection, each try a fresh model
and AdamW and one step (torch.OutOfMemoryError). PyTorch goes first and hands its cached memory
back to the driver; JAX allocates on demand (harness) with its limit raised to 95% of the device.
On a CPU neither library meets a device limit: flax_lm's steps are judged by the memory analysis
against --memory-gib, and PyTorch is not searched.
"""

import argparse
import gc
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # read when JAX's GPU client starts

import jax  # noqa: E402

from bench import gpt2_train, harness  # noqa: E402
from flax_lm.config import load as config_lib  # noqa: E402
from flax_lm.training import tpu_compile  # noqa: E402
from flax_lm.errors import UserError  # noqa: E402
from flax_lm.models import build_model  # noqa: E402
from flax_lm.training.state_init import host_params  # noqa: E402

GIB = 2 ** 30
TABLE = harness.Table("## Largest training batch, GPT-2", [
    *harness.DATE,
    ("model, T, dtype", lambda r: f"{r['config']} T={r['seq_len']} {r['dtype']}"),
    *harness.DEVICE,
    ("memory limit", lambda r: f"{r['memory_limit_bytes'] / GIB:.1f} GiB ({r['judged_by']})"),
    ("flax_lm largest batch, by remat policy",
     lambda r: ", ".join(f"{p}: {s['batch']}" for p, s in r["flax_lm"].items())),
    ("torch eager largest batch", lambda r: str(r["torch_eager"]["batch"]) if r["torch_eager"] else "-"),
    ("best flax_lm / torch", lambda r: f"**{r['ratio']:.2f}x**" if r["ratio"] else "-"),
    *harness.MEMORY_AND_RUN[-2:],
])


def largest(fits, multiple: int, limit: int, guess: int | None = None) -> int:
    """The largest multiple of `multiple`, at most `limit`, for which `fits(batch)` holds (0 when
    none does), `fits` being true up to some batch and false above it. From `guess` (else from
    `multiple`) the probe moves up while batches fit and down while they do not, its stride doubling
    each time, and the bracket found is then halved down to one `multiple`."""
    top = limit // multiple * multiple
    if top < multiple:
        return 0
    lo, hi = 0, top + multiple  # lo fits (0: no batch yet), hi does not (or is past the limit)
    probe = min(max(guess or multiple, multiple) // multiple * multiple, top)
    stride = multiple
    if fits(probe):
        lo = probe
        while lo + stride <= top and fits(lo + stride):
            lo, stride = lo + stride, stride * 2
        hi = min(lo + stride, hi)
    else:
        hi = probe
        while hi - stride >= multiple and not fits(hi - stride):
            hi, stride = hi - stride, stride * 2
        lo = hi - stride if hi - stride >= multiple else 0
    while hi - lo > multiple:
        mid = (lo + hi) // 2 // multiple * multiple
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _out_of_memory(e: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()


def flax_search(config_at, limit_bytes: int, multiple: int, max_batch: int, run: bool) -> dict:
    """flax_lm's largest batch for `config_at(batch)`: the batch XLA's memory analysis predicts
    (secant steps on bytes against batch), then each batch judged by running one step (`run`) or
    by the analysis against `limit_bytes`."""
    device = jax.devices()[0]
    analysed = {}

    def analysis(b: int) -> int:
        if b not in analysed:
            analysed[b] = tpu_compile.compile_train_step(config_at(b), [device])["per_chip_total_bytes"]
        return analysed[b]
    (b0, b1), predicted = (multiple, 2 * multiple), multiple
    for _ in range(4):  # the bytes are nearly affine in the batch: one or two steps land
        slope = (analysis(b1) - analysis(b0)) / (b1 - b0)
        guess = max_batch if slope <= 0 else int(b1 + (limit_bytes - analysis(b1)) / slope)
        predicted = min(max(guess // multiple * multiple, multiple), max_batch // multiple * multiple)
        if predicted in analysed:
            break
        b0, b1 = b1, predicted
    tries = []

    def fits(b: int) -> bool:
        ok = _runs(config_at(b)) if run else analysis(b) <= limit_bytes
        tries.append([b, ok])
        return ok
    return {"batch": largest(fits, multiple, max_batch, guess=predicted), "predicted": predicted,
            "analysed_bytes": {str(b): n for b, n in sorted(analysed.items())}, "tries": tries}


def _runs(cfg) -> bool:
    """Whether one flax_lm train step of `cfg` runs without running out of device memory."""
    step, t = None, cfg.model.max_len
    try:
        batch = gpt2_train.random_batch(cfg.train.batch_size, t, cfg.model.vocab_size)
        step, _, _ = harness.flax_trainer(cfg, batch, t)
        step()
        return True
    except jax.errors.JaxRuntimeError as e:
        if not _out_of_memory(e):
            raise
        return False
    finally:
        del step
        gc.collect()


def torch_search(cfg, multiple: int, max_batch: int, device) -> dict:
    """PyTorch's largest batch: each try builds GPT2LMHeadModel and AdamW afresh and runs one step."""
    import torch
    model, seq_len = build_model(cfg.model), cfg.model.max_len
    with jax.default_device(jax.devices("cpu")[0]):  # JAX keeps what it allocates: none on the GPU yet
        params = host_params(model, 0, seq_len)
    tries = []

    def fits(b: int) -> bool:
        try:
            batch = gpt2_train.random_batch(b, seq_len, cfg.model.vocab_size)
            step = gpt2_train.torch_trainer(cfg, batch, params, model.cfg, device, False)
            step()
            ok = True
        except RuntimeError as e:  # torch.OutOfMemoryError, or cuBLAS failing to allocate its workspace
            if not (_out_of_memory(e) or "ALLOC_FAILED" in str(e)):
                raise
            ok = False
        finally:
            step = None
            gc.collect()
            torch.cuda.empty_cache()
        tries.append([b, ok])
        return ok
    return {"batch": largest(fits, multiple, max_batch), "tries": tries}


def main(argv: list[str] | None = None, prog: str = "python -m bench.max_batch") -> dict:
    """Runs the search with command-line `argv`; returns the result (also printed as JSON)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.strip().splitlines()[0],
                                epilog="Any --config.section.key=value overrides the recipe.")
    p.add_argument("--config", "--model", dest="config", default="gpt2_small", help="a recipe (default: gpt2_small)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: model.max_len)")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"), help="compute dtype of both sides")
    p.add_argument("--remat", default="none,full", help="flax_lm's remat policies to search, comma-separated")
    p.add_argument("--multiple", type=int, default=8, help="batches searched are multiples of this (default: 8)")
    p.add_argument("--limit", type=int, default=4096, help="the largest batch tried (default: 4096)")
    p.add_argument("--memory-gib", type=float, default=None,
                   help="the memory budget where the device has no limit of its own (a CPU); required there")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result here")
    p.add_argument("--no-record", action="store_true", help="do not append a row to bench/RESULTS.md")
    args, overrides = harness.parse(p, argv)
    device = harness.torch_setup()
    stats = jax.devices()[0].memory_stats() or {}
    on_device = "bytes_limit" in stats
    if not on_device and args.memory_gib is None:
        p.error("this device reports no memory limit (a CPU): give --memory-gib")
    limit_bytes = int(args.memory_gib * GIB) if args.memory_gib else int(stats["bytes_limit"])

    def config_at(batch: int, policy: str = "none"):
        cfg = config_lib.load(args.config, overrides + [
            f"--config.model.dtype={args.dtype}", "--config.model.dropout=0.0", "--config.model.attention_dropout=0.0",
            "--config.train.grad_accum_steps=1", f"--config.train.batch_size={batch}",
            f"--config.model.remat_policy={policy}"]
            + ([f"--config.model.max_len={args.seq_len}"] if args.seq_len else []))
        cfg.parallel.update(data=1, fsdp=1, tensor=1)
        return cfg
    policies = args.remat.split(",")
    for policy in policies:  # a misspelt policy or key fails here, in one line, before any search
        try:
            config_at(args.multiple, policy)
        except UserError as e:
            p.error(str(e))
    seq_len = config_at(args.multiple).model.max_len
    torch_side = torch_search(config_at(args.multiple), args.multiple, args.limit, device) \
        if device.type == "cuda" else None
    flax_side = {policy: flax_search(lambda batch, policy=policy: config_at(batch, policy), limit_bytes,
                                     args.multiple, args.limit, run=on_device) for policy in policies}
    best = max(s["batch"] for s in flax_side.values())
    result = {"benchmark": "max_batch", "config": args.config, "seq_len": seq_len, "dtype": args.dtype,
              **harness.machine(), "memory_limit_bytes": limit_bytes,
              "judged_by": "a step run" if on_device else "XLA memory analysis", "flax_lm": flax_side,
              "torch_eager": torch_side,
              "ratio": best / torch_side["batch"] if torch_side and torch_side["batch"] else None,
              "command": harness.command_line(prog, argv)}
    harness.publish(result, args.json, None if args.no_record else TABLE.record)
    return result


if __name__ == "__main__":
    main()
