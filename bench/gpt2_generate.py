"""Decoding throughput: flax_lm `generate` against transformers `generate()` (PyTorch) on the
same GPT-2 weights, greedy, with the same prompts, in the same process.

Both sides make exactly --new tokens per sequence (no end token). transformers runs with its
default dynamic cache and with its static cache (and with --torch-compile, the static cache
under a compiled forward); the fastest is the reference. One call is one whole `generate`
(prefill included) on weights prepared for decoding once (`decoder.prepared`), as a program that
generates more than once holds them; the preparation is timed apart (`prepare_ms`). Rounds
alternate between the sides so that machine drift hits all of them.
No MFU: decoding is bound by memory bandwidth, and both formulas count training FLOPs.

    python -m bench generate --config gpt2_small --batch 1 [--seq-len 32] [--new 64] [--dtype bfloat16]
        [--steps 1] [--rounds 3] [--torch-compile] [--json PATH] [--no-record] [--config.key=value ...]
"""

import jax
import numpy as np

from bench import harness
from flax_lm.config import load as config_lib
from flax_lm.generation import CausalDecoder, GenerationConfig, generate
from flax_lm.models import build_model
from flax_lm.training.state_init import host_params

TORCH_SIDES = ("torch_dynamic", "torch_static", "torch_static_compile")
TABLE = harness.Table("## Decoding throughput, GPT-2", [
    *harness.DATE,
    ("model, batch, prompt + new, dtype", lambda r: f"{r['config']} B={r['batch']} {r['prompt']}+{r['new']} "
                                                    f"{r['dtype']}"),
    *harness.DEVICE,
    ("flax_lm tokens/s", lambda r: f"{r['flax_lm']['tokens_per_sec']:,.1f}"),
    *[(title, lambda r, side=side: f"{r[side]['tokens_per_sec']:,.1f}" if side in r else "-")
      for title, side in zip(("torch dynamic cache", "torch static cache", "torch static cache + compile"),
                             TORCH_SIDES)],
    ("speedup vs fastest torch", lambda r: harness.speedup(r, "speedup")),
    ("rows equal", lambda r: r["rows_token_equal"]),
    ("ms per call flax_lm / fastest torch, median (p25-p75)",
     lambda r: f"{harness.step_ms(r, 'flax_lm')} / {harness.step_ms(r, r['reference'])}"),
    *harness.MEMORY_AND_RUN,
])


def main(argv: list[str] | None = None, prog: str = "python -m bench.gpt2_generate") -> dict:
    """Runs the benchmark with command-line `argv`; returns the result (also printed as JSON)."""
    parser = harness.parser(prog, __doc__, config="gpt2_small", batch=1, seq_len=32, steps=1, warmup=1, rounds=3,
                            seq_flags=("--seq-len", "--prompt"), seq_help="prompt tokens per sequence")
    parser.add_argument("--new", type=int, default=64, help="tokens generated per sequence (default: 64)")
    args, overrides = harness.parse(parser, argv)
    device = harness.torch_setup()
    import torch

    cfg = config_lib.load(args.config, overrides + [f"--config.model.dtype={args.dtype}", "--config.model.dropout=0.0"])
    model = build_model(cfg.model)
    prompts_BxP = np.random.RandomState(0).randint(1, cfg.model.vocab_size, (args.batch, args.seq_len))
    params = host_params(model, 0, 8)

    def reference():
        hf = harness.torch_gpt2(params, model.cfg).eval().to(device)
        return hf.to(torch.bfloat16) if args.dtype == "bfloat16" else hf
    hf = reference()
    params = jax.device_put(params)
    prompts = prompts_BxP.tolist()
    prompts_torch = torch.from_numpy(prompts_BxP).to(device)
    config = GenerationConfig(max_new_tokens=args.new)
    decoder = CausalDecoder(model)

    def prepare():
        return jax.block_until_ready(decoder.prepared(params))
    prepare()  # compiled before it is timed
    prepare_times = harness.time_calls(prepare, 3)
    prepared = prepare()
    outputs = {}

    def ours():
        outputs["flax_lm"] = generate(decoder, prepared, prompts, config)

    def theirs(name, hf_model, cache):
        def run():
            with torch.no_grad():
                out = hf_model.generate(prompts_torch, attention_mask=torch.ones_like(prompts_torch),
                                        max_new_tokens=args.new, do_sample=False, eos_token_id=None, pad_token_id=0,
                                        cache_implementation=cache)
            outputs[name] = out[:, args.seq_len:].tolist()
        return run

    sides = {"flax_lm": ours, "torch_dynamic": theirs("torch_dynamic", hf, "dynamic"),
             "torch_static": theirs("torch_static", hf, "static")}
    if args.torch_compile:
        compiled = reference()
        compiled.forward = torch.compile(compiled.forward)
        sides["torch_static_compile"] = theirs("torch_static_compile", compiled, "static")
    times = harness.time_rounds(sides, args.warmup, args.steps, args.rounds)

    result = {"benchmark": "gpt2_generate", "config": args.config, "batch": args.batch, "prompt": args.seq_len,
              "new": args.new, "dtype": args.dtype,
              **harness.summarize(times, args.batch * args.new, args.batch, torch_device=device),
              "prepare_ms": 1000 * float(np.median(prepare_times)), "command": harness.command_line(prog, argv)}
    for name in sides:
        assert all(len(row) == args.new for row in outputs[name]), name
    reference_side = max((n for n in sides if n != "flax_lm"), key=lambda n: result[n]["tokens_per_sec"])
    result["reference"] = reference_side
    result["speedup"] = result["flax_lm"]["tokens_per_sec"] / result[reference_side]["tokens_per_sec"]
    same = [a == b for a, b in zip(outputs["flax_lm"], outputs[reference_side])]
    result["rows_token_equal"] = f"{sum(same)}/{len(same)}"
    harness.publish(result, args.json, None if args.no_record else TABLE.record)
    return result


if __name__ == "__main__":
    main()
