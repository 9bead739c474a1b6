"""The benchmark harness: timing both sides in turns, the PyTorch references, and recording results."""

import datetime
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from flax_lm.interop import gpt2 as interop


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


def machine() -> dict:
    """Where and with what a figure was measured."""
    import torch
    import transformers
    return {"device": jax.devices()[0].device_kind, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "date": datetime.date.today().isoformat(),
            "versions": {"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__}}


def publish(result: dict, json_path: str | None, record) -> None:
    """Prints the result as JSON, writes it to `json_path` if given, and `record(result)`s it
    (a row in bench/RESULTS.md) unless record is None."""
    print(json.dumps(result, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if record is not None:
        record(result)


RESULTS = Path(__file__).with_name("RESULTS.md")


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
