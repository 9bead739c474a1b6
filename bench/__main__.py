"""`python -m bench BENCHMARK [options]`: one benchmark against PyTorch, measured in this process.

    python -m bench gpt2-train --config gpt2_tiny --steps 8
    python -m bench bert-mlm --config bert_tiny --batch 8
    python -m bench generate --config gpt2_small --batch 1
    python -m bench input --batch 32 --seq-len 1024
    python -m bench max-batch --config gpt2_small --seq-len 1024 --dtype bfloat16
    python -m bench tpu --case gpt2-124m-v5e-4-data

The model benchmarks share --config/--model, --batch, --seq-len, --dtype, --steps, --warmup,
--rounds, --torch-compile, --peak-flops, --json PATH and --no-record (and take --config.key=value
overrides); `python -m bench BENCHMARK --help` lists them. Each prints its result as JSON and,
unless --no-record, appends a row to its table in bench/RESULTS.md.
"""

import argparse
import importlib
import sys


BENCHMARKS = {  # name: (module, what it measures)
    "gpt2-train": ("bench.gpt2_train", "training throughput, GPT-2 vs transformers.GPT2LMHeadModel"),
    "bert-mlm": ("bench.bert_mlm", "masked-LM training throughput, BERT vs transformers.BertForMaskedLM"),
    "generate": ("bench.gpt2_generate", "greedy decoding, flax_lm generate vs transformers generate()"),
    "input": ("bench.input_pipeline", "input pipeline throughput: read, tokenize, pack + batch"),
    "tpu": ("bench.tpu", "modelled TPU step time, flax_lm vs MaxText on the TPU compiler's cost model"),
    "max-batch": ("bench.max_batch", "the largest GPT-2 training batch that fits, flax_lm by remat policy vs PyTorch"),
}


def main(argv: list[str] | None = None):
    """Runs the benchmark named by argv[0] with the rest of argv; returns its result."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.strip().splitlines()[0],
        epilog="benchmarks: " + "; ".join(f"{name}: {what}" for name, (_, what) in BENCHMARKS.items()))
    parser.add_argument("benchmark", choices=BENCHMARKS)
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's options (BENCHMARK --help)")
    args = parser.parse_args(argv[:1])
    module = importlib.import_module(BENCHMARKS[args.benchmark][0])
    return module.main(argv[1:], prog=f"python -m bench {args.benchmark}")


if __name__ == "__main__":
    main()
