"""flax_lm against MaxText on the TPU compiler's cost model: the same model, topology, batch, sequence
length and remat compiled ahead of time on both sides (dot-product attention, layers unrolled), in one
pinned virtualenv so that both use the same jax and libtpu; the modelled step times and their ratio.

    python -m bench tpu [--case gpt2-124m-v5e-4-data ...] [--config.KEY=VALUE ...] [--no-record]

The virtualenv (Python 3.12, maxtext[tpu]==0.2.5: jax 0.12.1, libtpu 0.0.52, and this checkout
installed editable) is built once under ~/.cache/flax_lm/maxtext-venv. Each side compiles in its own
process (MaxText sets process-wide jax options).
"""

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("FLAX_LM_MAXTEXT_VENV", Path.home() / ".cache/flax_lm/maxtext-venv"))
MAXTEXT = "maxtext[tpu]==0.2.5"
PYTHON312 = os.environ.get("FLAX_LM_PYTHON312", "/root/.pyenv/versions/3.12.1/bin/python")
TABLE_HEADING = "## TPU modelled step against MaxText (TPU compiler's cost model, no TPU used)"


@dataclass(frozen=True)
class Model:
    """A decoder both sides build: flax_lm recipe + overrides, and MaxText's config keys."""
    recipe: str
    flax: tuple
    maxtext: tuple


GPT2 = Model("gpt2_small", ("--config.model.vocab_size=50304",),
             ("decoder_block=gpt3", "base_emb_dim=768", "base_num_query_heads=12", "base_num_kv_heads=12",
              "base_mlp_dim=3072", "base_num_decoder_layers=12", "head_dim=64", "vocab_size=50304",
              "mlp_activations=['gelu']", "logits_via_embedding=true", "trainable_position_size=1024",
              "use_iota_embed=true", "fused_qkv=true", "normalization_layer_epsilon=1e-5"))
LLAMA_125M = Model("llama_small", (),
                   ("decoder_block=llama2", "base_emb_dim=768", "base_num_query_heads=12", "base_num_kv_heads=4",
                    "base_mlp_dim=2048", "base_num_decoder_layers=12", "head_dim=64", "vocab_size=32000",
                    "mlp_activations=['silu','linear']", "logits_via_embedding=false",
                    "normalization_layer_epsilon=1e-5"))
LLAMA_1B = Model("llama_small", ("--config.model.d_model=2048", "--config.model.n_layers=16", "--config.model.n_heads=32",
                                 "--config.model.n_kv_heads=8", "--config.model.d_ff=8192", "--config.model.max_len=2048"),
                 ("decoder_block=llama2", "base_emb_dim=2048", "base_num_query_heads=32", "base_num_kv_heads=8",
                  "base_mlp_dim=8192", "base_num_decoder_layers=16", "head_dim=64", "vocab_size=32000",
                  "mlp_activations=['silu','linear']", "logits_via_embedding=false",
                  "normalization_layer_epsilon=1e-5"))


@dataclass(frozen=True)
class Case:
    """One comparison: model, topology (MaxText's name), chips, sequences per chip, length, layout, remat."""
    model: Model
    topology: str
    chips: int
    per_chip: int
    seq_len: int
    layout: str        # "data" or "fsdp": all chips on that axis
    remat: str         # flax_lm's policy: "full" or "none" (MaxText: full or minimal)


CASES = {
    "gpt2-124m-v5e-4-data": Case(GPT2, "v5e-4", 4, 8, 1024, "data", "full"),
    "gpt2-124m-v5e-4-fsdp": Case(GPT2, "v5e-4", 4, 8, 1024, "fsdp", "full"),
    "llama-125m-v5e-4-data": Case(LLAMA_125M, "v5e-4", 4, 8, 1024, "data", "full"),
    "llama-125m-v5e-4-fsdp": Case(LLAMA_125M, "v5e-4", 4, 8, 1024, "fsdp", "full"),
    "llama-1b-v5p-8-fsdp": Case(LLAMA_1B, "v5p-8", 4, 8, 2048, "fsdp", "full"),
    "llama-1b-v6e-8-fsdp": Case(LLAMA_1B, "v6e-8", 8, 8, 2048, "fsdp", "full"),
    "gpt2-124m-v5e-16-fsdp": Case(GPT2, "v5e-16", 16, 8, 1024, "fsdp", "full"),
}


def flax_args(case: Case, extra: list[str]) -> list[str]:
    """`flax-lm compile` arguments of a case (its overrides, then the caller's). Attention is
    flax_lm's XLA dot-product form that recomputes its scores (no Pallas kernel on either side)."""
    data, fsdp = (case.chips, 1) if case.layout == "data" else (1, case.chips)
    return ["compile", "--config", case.model.recipe, "--topology", case.topology, *case.model.flax,
            f"--config.train.batch_size={case.per_chip * case.chips}", f"--config.model.max_len={case.seq_len}",
            f"--config.data.seq_len={case.seq_len}", "--config.model.scan_layers=false",
            f"--config.model.remat_policy={case.remat}", "--config.model.attention=recompute",
            f"--config.parallel.data={data}", f"--config.parallel.fsdp={fsdp}", *extra]


def maxtext_args(case: Case, extra: list[str]) -> list[str]:
    """MaxText train_compile arguments (after base.yml) of a case."""
    data, fsdp = (case.chips, 1) if case.layout == "data" else (1, case.chips)
    return [*case.model.maxtext, f"compile_topology={case.topology}", "compile_topology_num_slices=1",
            f"per_device_batch_size={case.per_chip}", f"max_target_length={case.seq_len}",
            f"remat_policy={'full' if case.remat == 'full' else 'minimal'}", "scan_layers=false",
            "attention=dot_product", "dtype=bfloat16", "weight_dtype=float32", "opt_type=adamw", "enable_dropout=false",
            f"ici_data_parallelism={data}", f"ici_fsdp_parallelism={fsdp}", "enable_checkpointing=false",
            "dataset_type=synthetic", "base_output_directory=/tmp/flax_lm_maxtext", "run_name=bench_tpu", *extra]


def ensure_venv() -> Path:
    """The pinned MaxText virtualenv's python, built on first use."""
    python = VENV / "bin/python"
    # flax_lm is importable the way run_side imports it (this checkout on PYTHONPATH), not only installed
    if not (python.exists() and subprocess.run([python, "-c", "import maxtext, flax_lm"], capture_output=True,
                                               cwd="/", env=_side_env()).returncode == 0):
        print(f"building {VENV} ({MAXTEXT} on Python 3.12, minutes)", flush=True)
        subprocess.run([PYTHON312, "-m", "venv", VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", MAXTEXT], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", REPO], check=True)
    return python


def _side_env() -> dict:
    """The environment of a side's process: this checkout's flax_lm, compiling for TPU on the CPU."""
    return {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def run_side(python: Path, side: str, args: list[str]) -> dict:
    """One side's modelled step, compiled in a fresh process of the venv's python."""
    done = subprocess.run([python, "-m", "bench.tpu_side", side, *args], capture_output=True, text=True,
                          env=_side_env(), cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{side} side failed ({done.returncode}): {done.stderr.strip().splitlines()[-5:]}")
    return json.loads(lines[-1])


def main(argv=None, prog="python -m bench tpu"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=CASES, help="default: all")
    parser.add_argument("--maxtext", action="append", default=[], help="an extra MaxText key=value")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--no-record", action="store_true")
    args, flax_extra = parser.parse_known_args(argv)
    python = ensure_venv()
    results = []
    for name in args.case or CASES:
        case = CASES[name]
        ours = run_side(python, "flax", flax_args(case, flax_extra))
        theirs = run_side(python, "maxtext", maxtext_args(case, args.maxtext))
        # the same model, batch and chips: flax_lm's token count and model FLOPs price MaxText's step too
        scale = ours["modeled_step_seconds"] / theirs["modeled_step_seconds"]
        theirs["modeled_tokens_per_second_per_chip"] = ours["modeled_tokens_per_second_per_chip"] * scale
        theirs["modeled_mfu"] = {k: v * scale for k, v in ours["modeled_mfu"].items()}
        result = {"case": name, "flax_overrides": flax_extra, "flax_lm": ours, "maxtext": theirs,
                  "step_time_ratio": ours["modeled_step_seconds"] / theirs["modeled_step_seconds"]}
        results.append(result)
        print(row(result), flush=True)
        print(json.dumps(result), flush=True)
        if not args.no_record:
            from bench.harness import add_row
            add_row(TABLE_HEADING, HEADER, row(result))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


HEADER = ("| case | flax_lm overrides | flax_lm: step, tokens/s/chip, MFU (6N+12LHQT), GB moved/chip | "
          "MaxText: step, tokens/s/chip, MFU, GB moved/chip | flax_lm / MaxText step time | versions |\n"
          "| --- | --- | --- | --- | --- | --- |")


def row(r: dict) -> str:
    """A RESULTS table row of one comparison."""
    def side(s):
        return (f"{s['modeled_step_seconds'] * 1e3:.1f} ms, {s['modeled_tokens_per_second_per_chip'] / 1e3:.1f}K, "
                f"{s['modeled_mfu']['6N+12LHQT']:.1%}, {s['bytes_accessed_per_chip'] / 1e9:.1f} GB")
    return (f"| {r['case']} | {' '.join(r['flax_overrides']) or '(case only)'} | {side(r['flax_lm'])} | "
            f"{side(r['maxtext'])} | {r['step_time_ratio']:.3f} | {r['flax_lm']['versions']} |")


if __name__ == "__main__":
    sys.exit(main() and 0)
