"""Decoding throughput: flax_lm `generate` against transformers `generate()` (PyTorch) on the
same GPT-2 weights, greedy, with the same prompts, in the same process.

Both sides make exactly --new tokens per sequence (no end token). transformers runs with its
default dynamic cache and with its static cache; the faster is the reference. Rounds alternate
between the sides so that machine drift hits all of them.

    python -m bench.gpt2_generate --config gpt2_small --batch 1 [--prompt 32] [--new 64] [--rounds 3]
"""

import argparse
import os
import statistics
import sys

import jax
import numpy as np

from bench.harness import add_row, machine, publish, time_rounds, torch_gpt2
from flax_lm import config as config_lib
from flax_lm.generation import CausalDecoder, GenerationConfig, generate
from flax_lm.models import build_model
from flax_lm.state_init import host_params

TABLE_HEADING = "## Decoding throughput, GPT-2 (flax_lm generate vs transformers generate(), greedy)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="gpt2_small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per sequence")
    parser.add_argument("--new", type=int, default=64, help="tokens generated per sequence")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(os.cpu_count())

    cfg = config_lib.load(args.config, [f"--config.model.dtype={args.dtype}", "--config.model.dropout=0.0"])
    model = build_model(cfg.model)
    prompts_BxP = np.random.RandomState(0).randint(1, cfg.model.vocab_size, (args.batch, args.prompt))
    params = host_params(model, 0, 8)
    hf = torch_gpt2(params, model.cfg).eval()
    params = jax.device_put(params)
    if args.dtype == "bfloat16":
        hf = hf.to(torch.bfloat16)
    prompts = prompts_BxP.tolist()
    config = GenerationConfig(max_new_tokens=args.new)
    decoder = CausalDecoder(model)
    outputs = {}

    def ours():
        outputs["flax_lm"] = generate(decoder, params, prompts, config)

    def theirs(cache):
        def run():
            with torch.no_grad():
                out = hf.generate(torch.from_numpy(prompts_BxP), attention_mask=torch.ones_like(
                    torch.from_numpy(prompts_BxP)), max_new_tokens=args.new, do_sample=False, eos_token_id=None,
                    pad_token_id=0, cache_implementation=cache)
            outputs[f"torch_{cache}"] = out[:, args.prompt:].tolist()
        return run

    sides = {"flax_lm": ours, "torch_dynamic": theirs("dynamic"), "torch_static": theirs("static")}
    times = time_rounds(sides, 1, 1, args.rounds)  # the untimed call compiles and allocates

    tokens = args.batch * args.new
    result = {"benchmark": "gpt2_generate", "config": args.config, "batch": args.batch, "prompt": args.prompt,
              "new": args.new, "dtype": args.dtype, **machine(),
              "command": "python -m bench.gpt2_generate " + " ".join(argv if argv is not None else sys.argv[1:])}
    for name, ts in times.items():
        result[name] = {"seconds_median": statistics.median(ts), "tokens_per_s": tokens / statistics.median(ts)}
        assert all(len(row) == args.new for row in outputs[name]), name
    reference = max(("torch_dynamic", "torch_static"), key=lambda n: result[n]["tokens_per_s"])
    result["reference"] = reference
    result["speedup"] = result["flax_lm"]["tokens_per_s"] / result[reference]["tokens_per_s"]
    same = [a == b for a, b in zip(outputs["flax_lm"], outputs[reference])]
    result["rows_token_equal"] = f"{sum(same)}/{len(same)}"
    publish(result, args.json, None if args.no_record else record)
    return result


def record(r: dict) -> None:
    """Adds one row to the decoding table of bench/RESULTS.md."""
    add_row(TABLE_HEADING, "| date | model, batch, prompt + new, dtype | device | flax_lm tokens/s | torch dynamic "
            "cache | torch static cache | speedup vs faster torch | rows equal | versions | command |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {r['date']} | {r['config']} B={r['batch']} {r['prompt']}+{r['new']} {r['dtype']} | {r['device']}, "
            f"{r['cores']} cores | {r['flax_lm']['tokens_per_s']:,.1f} | {r['torch_dynamic']['tokens_per_s']:,.1f} | "
            f"{r['torch_static']['tokens_per_s']:,.1f} | **{r['speedup']:.2f}x** | {r['rows_token_equal']} | "
            f"jax {r['versions']['jax']}, torch {r['versions']['torch']} | `{r['command']}` |")


if __name__ == "__main__":
    main()
