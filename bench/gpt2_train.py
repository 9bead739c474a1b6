"""Training throughput: flax_lm GPT-2 against transformers.GPT2LMHeadModel (PyTorch).

Both sides train the same architecture (weights converted from one init), with the
same batch, sequence length, AdamW settings and global-norm clipping, on the same
random token batch. Rounds alternate between the two so that machine drift hits both.

    python -m bench gpt2-train --config gpt2_tiny [--batch 32] [--seq-len 128] [--dtype bfloat16]
        [--steps 10] [--rounds 3] [--torch-compile] [--json PATH] [--no-record] [--config.key=value ...]
"""

import jax
import numpy as np

from bench import harness
from flax_lm.config import load as config_lib

TABLE = harness.Table("## Training throughput, GPT-2", [
    *harness.DATE,
    ("model, batch, dtype", lambda r: f"{r['config']} B={r['batch']} T={r['seq_len']} V={r['vocab']} {r['dtype']}"),
    *harness.DEVICE,
    ("flax_lm tokens/s", lambda r: f"{r['flax_lm']['tokens_per_sec']:,.0f}"),
    ("torch eager tokens/s", lambda r: f"{r['torch_eager']['tokens_per_sec']:,.0f}"),
    ("vs eager", lambda r: harness.speedup(r, "speedup_vs_torch_eager")),
    ("vs torch.compile", lambda r: harness.speedup(r, "speedup_vs_torch_compile") if "torch_compile" in r else "-"),
    *harness.STEP_TIME, *harness.MFU, *harness.MEMORY_AND_RUN,
])


def random_batch(b: int, t: int, vocab: int) -> dict:
    """A language-modelling batch of b sequences of t random tokens (the same every call)."""
    tokens = np.random.RandomState(0).randint(0, vocab, (b, t + 1)).astype(np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((b, t), np.float32)}


def torch_trainer(cfg, batch: dict, params0, model_cfg, device, compile_model: bool):
    """The PyTorch side: one training step of GPT2LMHeadModel on `batch`, blocking."""
    import torch
    model = harness.torch_gpt2(params0, model_cfg).to(device)
    model.train()
    forward = torch.compile(model) if compile_model else model
    inputs, targets = (torch.from_numpy(batch[k]).long().to(device) for k in ("inputs", "targets"))

    def loss():
        with harness.torch_autocast(device, cfg.model.dtype):
            logits = forward(inputs).logits
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    return harness.torch_train_step(model, harness.torch_adamw(model, cfg.optim), loss, cfg.optim.grad_clip_norm)


def main(argv: list[str] | None = None, prog: str = "python -m bench.gpt2_train") -> dict:
    """Runs the benchmark with command-line `argv`; returns the result (also printed as JSON)."""
    parser = harness.parser(prog, __doc__, config="gpt2_tiny", batch=None, seq_len=None, steps=10, warmup=3,
                            rounds=3)
    args, overrides = harness.parse(parser, argv)
    device = harness.torch_setup()
    overrides += [f"--config.model.dtype={args.dtype}", "--config.model.dropout=0.0",
                  "--config.model.attention_dropout=0.0", "--config.train.grad_accum_steps=1"]
    if args.batch:
        overrides.append(f"--config.train.batch_size={args.batch}")
    if args.seq_len:
        overrides.append(f"--config.model.max_len={args.seq_len}")
    cfg = config_lib.load(args.config, overrides)
    b, t, v = cfg.train.batch_size, cfg.model.max_len, cfg.model.vocab_size
    batch = random_batch(b, t, v)

    jax_step, params0, model_cfg = harness.flax_trainer(cfg, batch, t)
    sides = {"flax_lm": jax_step, "torch_eager": torch_trainer(cfg, batch, params0, model_cfg, device, False)}
    if args.torch_compile:
        sides["torch_compile"] = torch_trainer(cfg, batch, params0, model_cfg, device, True)
    times = harness.time_rounds(sides, args.warmup, args.steps, args.rounds)

    n_params = int(sum(np.size(x) for x in jax.tree.leaves(params0)))
    result = {"benchmark": "gpt2_train", "config": args.config, "batch": b, "seq_len": t, "vocab": v,
              "dtype": args.dtype, "params": n_params,
              **harness.summarize(times, b * t, b, torch_device=device, peak_flops=args.peak_flops,
                                  flops=harness.flops_per_token(model_cfg, n_params, t)),
              "command": harness.command_line(prog, argv)}
    harness.publish(result, args.json, None if args.no_record else TABLE.record)
    return result


if __name__ == "__main__":
    main()
