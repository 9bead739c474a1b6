"""The benchmark harness: the options every benchmark takes, timing both sides in turns, the
PyTorch references, the figures every benchmark reports (step time and its spread, tokens and
sequences a second, MFU under two FLOP formulas, peak device memory, versions) and recording
them (JSON, and one row in a table of bench/RESULTS.md)."""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Both libraries share one accelerator in a benchmark, so JAX must not reserve 75% of its memory
# at start. JAX reads this when its GPU client starts (the first device query), after this import.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from flax_lm.parallel import hardware  # noqa: E402
from flax_lm.training import optim, state_init  # noqa: E402
from flax_lm.parallel import mesh as mesh_lib  # noqa: E402
from flax_lm.interop import gpt2 as interop  # noqa: E402
from flax_lm.models import build_model, head_name  # noqa: E402
from flax_lm.models import flops_per_token as nanogpt_flops_per_token  # noqa: E402
from flax_lm.tasks import get_task  # noqa: E402
from flax_lm.training.train_step import make_train_step  # noqa: E402

# bench/gpu.sh points this at a copy, so a run on a remote GPU machine leaves the tree as it was
RESULTS = Path(os.environ.get("FLAX_LM_RESULTS") or Path(__file__).with_name("RESULTS.md"))


# ---- the command line ----

def parser(prog: str, doc: str, *, config: str, batch: int | None, seq_len: int | None, steps: int, warmup: int,
           rounds: int, seq_flags: tuple[str, ...] = ("--seq-len", "--seq"),
           seq_help: str = "tokens per sequence (default: model.max_len)") -> argparse.ArgumentParser:
    """The options every model benchmark takes, with this benchmark's defaults; the module adds
    its own options to the parser returned. `--config.key=value` overrides pass through `parse`."""
    p = argparse.ArgumentParser(prog=prog, description=doc.strip().splitlines()[0],
                                epilog="Any --config.section.key=value overrides the recipe.")
    p.add_argument("--config", "--model", dest="config", default=config,
                   help=f"a recipe in configs/ or a recipe file (default: {config})")
    p.add_argument("--batch", type=int, default=batch,
                   help="sequences per step" + (f" (default: {batch})" if batch else " (default: the recipe's)"))
    p.add_argument(*seq_flags, dest="seq_len", type=int, default=seq_len,
                   help=seq_help + (f" (default: {seq_len})" if seq_len else ""))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype of both sides (PyTorch: autocast)")
    p.add_argument("--steps", type=int, default=steps, help=f"timed calls per round and side (default: {steps})")
    p.add_argument("--warmup", type=int, default=warmup,
                   help=f"untimed calls per side first: compilation and allocation (default: {warmup})")
    p.add_argument("--rounds", type=int, default=rounds,
                   help=f"rounds in which the sides take turns (default: {rounds})")
    p.add_argument("--torch-compile", action="store_true", help="also measure the reference under torch.compile")
    p.add_argument("--peak-flops", type=float, default=0.0,
                   help="peak FLOP/s of one device, for MFU (default: the device kind's dense bf16 peak in "
                        "flax_lm/parallel/hardware.py; none on CPU, where MFU is null)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result here")
    p.add_argument("--no-record", action="store_true", help="do not append a row to bench/RESULTS.md")
    return p


def parse(arg_parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(options, the --config.key=value overrides among argv); anything else exits 2 with usage."""
    args, extra = arg_parser.parse_known_args(argv)
    unknown = [a for a in extra if not a.startswith("--config.")]
    if unknown:
        arg_parser.error("unrecognized arguments: " + " ".join(unknown))
    return args, extra


def command_line(prog: str, argv: list[str] | None) -> str:
    """The command that made a result, as it can be pasted into a shell."""
    argv = sys.argv[1:] if argv is None else argv
    return " ".join([prog, *map(shlex.quote, argv)])


# ---- timing ----

def time_calls(fn, n: int, settle: float = 1.0) -> list[float]:
    """Wall seconds of each of n calls of fn (which must block until its work is done), after
    `settle` idle seconds: PyTorch's OpenMP threads spin for a while after each call, and would
    otherwise take the cores from whichever side runs next."""
    time.sleep(settle)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def time_rounds(sides: dict, warmup: int, calls: int, rounds: int) -> dict[str, list[float]]:
    """{name: wall seconds of each timed call} of every side's callable: `warmup` untimed calls
    each, then `rounds` rounds of `calls` calls, the sides taking turns so that drift in the
    machine's speed hits all of them alike."""
    for fn in sides.values():
        time_calls(fn, warmup)
    times = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            times[name] += time_calls(fn, calls)
    return times


# ---- the two sides ----

def flax_trainer(cfg, batch: dict, seq_len: int):
    """flax_lm's jitted train step for `cfg` (its task's model and loss) on one device, fed the
    same host `batch` (of `seq_len` tokens a sequence) each call. Returns (step() -> None once
    the step is done, the initial parameters as numpy, the model's config)."""
    cfg.parallel.update(data=1, fsdp=1, tensor=1)
    mesh = mesh_lib.make_mesh(cfg, jax.devices()[:1])
    model = build_model(cfg.model, head_name(cfg))
    tx = optim.make_optimizer(cfg.optim, cfg.train.steps, cfg.model.n_layers)
    schedule = optim.learning_rate_schedule(cfg.optim, cfg.train.steps)
    _, shardings = state_init.state_shardings(model, tx, mesh, 0, seq_len)
    state = state_init.create_state(model, tx, mesh, 0, seq_len, shardings)
    step_fn = jax.jit(make_train_step(model, get_task(cfg), tx, schedule, cfg.train.grad_accum_steps),
                      donate_argnums=0)
    device_batch = jax.device_put(batch)
    params0 = jax.tree.map(np.asarray, jax.device_get(state.params))
    holder = {"state": state}

    def step():
        holder["state"], metrics = step_fn(holder["state"], device_batch)
        jax.block_until_ready(metrics["loss"])
    return step, params0, model.cfg


def torch_setup():
    """PyTorch on all cores; returns the device for the reference: the GPU when JAX runs on one
    and PyTorch sees it, else the CPU (a warning when that makes the sides unequal)."""
    try:
        import torch
    except ModuleNotFoundError:
        sys.exit("bench: the reference side is PyTorch, which is not installed: pip install 'flax_lm[torch]'")
    torch.set_num_threads(os.cpu_count())
    if jax.default_backend() == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    print(f"warning: JAX runs on {jax.default_backend()} but PyTorch sees no CUDA device; the reference runs on "
          f"the CPU", file=sys.stderr)
    return torch.device("cpu")


def torch_autocast(device, dtype: str):
    """The autocast context for flax_lm's compute `dtype` (off for float32)."""
    import torch
    return torch.autocast(device.type, dtype=getattr(torch, dtype), enabled=dtype != "float32")


def torch_adamw(model, o):
    """torch AdamW as flax_lm's `optim` section sets it: no decay on biases and LayerNorm scales."""
    import torch
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)


def torch_train_step(model, optimizer, loss_fn, grad_clip_norm: float):
    """One PyTorch training step of `loss_fn()` (AdamW and clipping as flax_lm's), as a callable
    that blocks until the step is done."""
    import torch

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        if grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        optimizer.step()
        loss.item()
    return step


def torch_gpt2(params, model_cfg):
    """transformers.GPT2LMHeadModel (SDPA attention) holding the same weights as flax_lm `params`."""
    import torch
    import transformers
    hf_cfg = transformers.GPT2Config(**interop.config_to_hf(model_cfg), bos_token_id=0, eos_token_id=0)
    hf_cfg._attn_implementation = "sdpa"
    model = transformers.GPT2LMHeadModel(hf_cfg)
    state_dict = {k: torch.from_numpy(np.array(v)) for k, v in interop.params_to_hf(params, model_cfg).items()}
    model.load_state_dict(state_dict, strict=False)
    return model


# ---- the figures ----

def flops_per_token(model_cfg, n_params: int, seq_len: int) -> dict[str, float]:
    """Training (forward + backward) FLOPs per token under two published formulas, with L layers,
    H heads of Q dimensions, C = H Q = d_model, T = `seq_len` tokens a sequence:

    - "nanogpt": 6 N + 12 L H Q T (nanoGPT's `estimate_mfu`, the PaLM paper's appendix B), from
      `flax_lm.models.flops_per_token`, with N as there: for GPT-2 every parameter but the position
      embeddings, the tied output head counted once (nanoGPT's `get_num_params()`); for BERT the
      encoder layers only (no embeddings; the heads run on the masked positions only).
    - "llmc": 6 N + 6 L C T (llm.c's `gpt2_estimate_mfu`, after Kaplan et al. 2020, section 2.1),
      with N = `n_params`, every parameter the model trains: token and position embeddings,
      biases, LayerNorms and heads, a tied head once. (llm.c's own N counts the vocabulary padded
      to a multiple of 128; flax_lm's vocabulary is not padded, so N is the model's real count.)
    """
    return {"nanogpt": float(nanogpt_flops_per_token(model_cfg, seq_len)),
            "llmc": float(6 * n_params + 6 * model_cfg.n_layers * model_cfg.d_model * seq_len)}


def step_time_stats(times: list[float]) -> dict:
    """Seconds per call: the median, the quartiles p25 and p75 and their difference iqr (the
    spread), min, max and the number of calls n."""
    median = statistics.median(times)
    p25, _, p75 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (median,) * 3
    return {"median": median, "p25": p25, "p75": p75, "iqr": p75 - p25, "min": min(times), "max": max(times),
            "n": len(times)}


def side_figures(times: list[float], tokens_per_call: int, sequences_per_call: int, flops: dict | None,
                 peak: float | None) -> dict:
    """One side's figures from its call times: step_time_s (see `step_time_stats`),
    tokens_per_sec and sequences_per_sec at the median, and with `flops` (per token, by formula
    name) mfu_<formula>: achieved FLOP/s over `peak` FLOP/s of the one device, null without a peak."""
    stats = step_time_stats(times)
    figures = {"step_time_s": stats, "tokens_per_sec": tokens_per_call / stats["median"],
               "sequences_per_sec": sequences_per_call / stats["median"]}
    for formula, per_token in (flops or {}).items():
        figures[f"mfu_{formula}"] = figures["tokens_per_sec"] * per_token / peak if peak else None
    return figures


def peak_memory(torch_device) -> dict:
    """Peak bytes allocated so far on the device, per library: {"flax_lm": JAX's
    peak_bytes_in_use, "torch": torch.cuda.max_memory_allocated}; null where the device keeps
    no count (JAX and PyTorch on CPU). PyTorch's figure covers all its sides (eager, compiled)."""
    stats = jax.devices()[0].memory_stats() or {}
    torch_bytes = None
    if torch_device.type == "cuda":
        import torch
        torch_bytes = int(torch.cuda.max_memory_allocated(torch_device))
    return {"flax_lm": stats.get("peak_bytes_in_use"), "torch": torch_bytes}


def cpu_model(cpuinfo: str | None = None) -> str:
    """The host CPU as /proc/cpuinfo names it, with its family and model numbers where the name alone
    does not tell the generation ("AMD EPYC (family 25, model 17)"): cloud machines of one name differ,
    and a ratio against PyTorch moves with the CPU (AMX or not). Elsewhere, the architecture."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if not name:
        return platform.processor() or platform.machine()
    if not any(ch.isdigit() for ch in name) and "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def machine() -> dict:
    """Where and with what a figure was measured."""
    import flax
    import jaxlib
    import torch
    import transformers
    device = jax.devices()[0]
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"device": device.device_kind, "platform": device.platform, "device_count": jax.device_count(),
            "cpu": cpu_model(), "cores": os.cpu_count(),
            "load_average": os.getloadavg()[0],  # the host's, over the last minute: other jobs sharing it
            "date": now.date().isoformat(), "time_utc": now.isoformat(timespec="seconds"),
            "versions": {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                         "flax": flax.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__}}


def summarize(times: dict[str, list[float]], tokens_per_call: int, sequences_per_call: int, *, torch_device,
              flops: dict | None = None, peak_flops: float = 0.0) -> dict:
    """The figures every benchmark reports, from `time_rounds`' times: the machine and versions,
    each side's figures (`side_figures`) under its name, speedup_vs_<torch side> (its median
    time over flax_lm's), peak_memory_bytes, and with `flops` the FLOPs per token and the peak
    the MFU is relative to (`--peak-flops`, else the device kind's dense bf16 peak, else null)."""
    peak = hardware.peak_flops_per_device(peak_flops)
    result = {**machine(), "torch_device": str(torch_device)}
    if flops is not None:
        result.update(peak_flops_per_device=peak, flops_per_token=flops)
    for name, ts in times.items():
        result[name] = side_figures(ts, tokens_per_call, sequences_per_call, flops, peak)
    ours = result["flax_lm"]["step_time_s"]["median"]
    for name in times:
        if name != "flax_lm":
            result[f"speedup_vs_{name}"] = result[name]["step_time_s"]["median"] / ours
    result["peak_memory_bytes"] = peak_memory(torch_device)
    return result


# ---- recording ----

def publish(result: dict, json_path: str | None, record) -> None:
    """Prints the result as JSON, writes it to `json_path` if given, and `record(result)`s it
    (a row in bench/RESULTS.md) unless record is None."""
    print(json.dumps(result, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if record is not None:
        record(result)


@dataclasses.dataclass(frozen=True)
class Table:
    """A table of bench/RESULTS.md: the section title it sits under (a prefix of it is enough)
    and its columns, (title, the cell of a result) each."""
    heading: str
    columns: list[tuple[str, Callable[[dict], str]]]

    def record(self, result: dict) -> None:
        """Appends `result` as one row (the section, with the header, is made if missing)."""
        header = "| " + " | ".join(title for title, _ in self.columns) + " |\n|" + " --- |" * len(self.columns)
        add_row(self.heading, header, "| " + " | ".join(cell(result) for _, cell in self.columns) + " |")


def add_row(heading: str, table_header: str, row: str) -> None:
    """Adds `row` at the end of the section of bench/RESULTS.md whose title starts with `heading`
    (a new section with `table_header` at the end of the file if there is none)."""
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else "# Benchmark results\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{table_header}"
        start = text.find(heading)
    end = text.find("\n## ", start + len(heading))
    end = len(text) if end < 0 else end
    section = text[start:end].rstrip("\n") + "\n" + row.rstrip("\n") + "\n"
    RESULTS.write_text(text[:start] + section + ("\n" + text[end:].lstrip("\n") if end < len(text) else ""),
                       encoding="utf-8")


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def _mfu(r: dict) -> str:
    ours = r["flax_lm"]
    if ours.get("mfu_nanogpt") is None:
        return "n/a (no peak)"
    return f"{ours['mfu_nanogpt']:.1%} / {ours['mfu_llmc']:.1%}"


def step_ms(r: dict, side: str) -> str:
    """A side's milliseconds per call as "median (p25-p75)"."""
    s = r[side]["step_time_s"]
    return f"{s['median'] * 1e3:,.1f} ({s['p25'] * 1e3:,.1f}-{s['p75'] * 1e3:,.1f})"


def cores_shared(r: dict) -> bool:
    """Whether other jobs used the CPU's cores during a CPU run: the host's 1-minute load average
    above the core count (the run's own threads account for up to the core count)."""
    return r["platform"] == "cpu" and r["load_average"] > r["cores"] + 0.5


def speedup(r: dict, key: str) -> str:
    """The ratio `r[key]` as a cell, flagged when other jobs shared the cores: PyTorch's OpenMP
    threads then lose far more than XLA's, and the ratio is not that of a quiet machine."""
    return f"**{r[key]:.2f}x**" + (" (cores shared: not comparable)" if cores_shared(r) else "")


# Columns every table shares: first the date and the machine, last the spread, memory, versions and command.
DATE = [("date", lambda r: r["date"])]
DEVICE = [("device", lambda r: r["device"] + (f" ({r['cpu']})" if r["platform"] == "cpu" else "")
           + f", {r['cores']} cores, load {r['load_average']:.1f}")]
STEP_TIME = [("ms per step flax_lm / torch eager, median (p25-p75)",
              lambda r: f"{step_ms(r, 'flax_lm')} / {step_ms(r, 'torch_eager')}")]
MFU = [("MFU nanoGPT / llm.c", _mfu)]
MEMORY_AND_RUN = [
    ("peak memory flax_lm / torch", lambda r: f"{_gib(r['peak_memory_bytes']['flax_lm'])} / "
                                              f"{_gib(r['peak_memory_bytes']['torch'])}"),
    ("versions", lambda r: ", ".join(f"{k} {v}" for k, v in r["versions"].items() if k != "python")),
    ("command", lambda r: f"`{r['command']}`"),
]
