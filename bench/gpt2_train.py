"""Training throughput: flax_lm GPT-2 against transformers.GPT2LMHeadModel (PyTorch).

Both sides train the same architecture (weights converted from one init), with the
same batch, sequence length, AdamW settings and global-norm clipping, on the same
random token batch. Rounds alternate between the two so that machine drift hits both.

    python -m bench.gpt2_train --config gpt2_tiny [--batch 32] [--steps 10] [--rounds 3]
"""

import argparse
import os
import statistics
import sys

import jax
import numpy as np

from bench.harness import add_row, machine, publish, time_rounds, torch_gpt2, torch_train_step
from flax_lm import config as config_lib
from flax_lm import mesh as mesh_lib
from flax_lm import optim, state_init
from flax_lm.models import build_model
from flax_lm.models.gpt2 import flops_per_token
from flax_lm.tasks import get_task
from flax_lm.train_step import make_train_step


def flax_trainer(cfg, batch):
    """(step() -> None after the step is done, initial params as numpy)."""
    cfg.parallel.update(data=1, fsdp=1, tensor=1)
    mesh = mesh_lib.make_mesh(cfg, jax.devices()[:1])
    model = build_model(cfg.model)
    tx = optim.make_optimizer(cfg.optim, cfg.train.steps, cfg.model.n_layers)
    schedule = optim.learning_rate_schedule(cfg.optim, cfg.train.steps)
    _, shardings = state_init.state_shardings(model, tx, mesh, 0, cfg.model.max_len)
    state = state_init.create_state(model, tx, mesh, 0, cfg.model.max_len, shardings)
    step_fn = jax.jit(make_train_step(model, get_task(cfg), tx, schedule, cfg.train.grad_accum_steps),
                      donate_argnums=0)
    device_batch = jax.device_put(batch)
    params0 = jax.device_get(state.params)
    holder = {"state": state}

    def step():
        holder["state"], metrics = step_fn(holder["state"], device_batch)
        jax.block_until_ready(metrics["loss"])
    return step, params0


def torch_trainer(cfg, batch, params0, compile_model: bool):
    import torch
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.model.dtype]
    model = torch_gpt2(params0, build_model(cfg.model).cfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    o = cfg.optim
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
    forward = torch.compile(model) if compile_model else model
    inputs, targets = torch.from_numpy(batch["inputs"]).long(), torch.from_numpy(batch["targets"]).long()

    def loss():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = forward(inputs).logits
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    return torch_train_step(model, opt, loss, o.grad_clip_norm)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="gpt2_tiny")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default: the config's)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default: model.max_len)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and side")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch-compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("overrides", nargs="*", help="--config.key=value overrides")
    args, extra = parser.parse_known_args(argv)
    import torch
    torch.set_num_threads(os.cpu_count())

    overrides = list(extra) + [f"--config.model.dtype={args.dtype}"]
    if args.batch:
        overrides.append(f"--config.train.batch_size={args.batch}")
    if args.seq:
        overrides.append(f"--config.model.max_len={args.seq}")
    overrides += ["--config.model.dropout=0.0", "--config.model.attention_dropout=0.0",
                  "--config.train.grad_accum_steps=1"]
    cfg = config_lib.load(args.config, overrides)
    b, t, v = cfg.train.batch_size, cfg.model.max_len, cfg.model.vocab_size
    rng = np.random.RandomState(0)
    tokens = rng.randint(0, v, (b, t + 1)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((b, t), np.float32)}

    jax_step, params0 = flax_trainer(cfg, batch)
    sides = {"flax_lm": jax_step, "torch_eager": torch_trainer(cfg, batch, params0, False)}
    if args.torch_compile:
        sides["torch_compile"] = torch_trainer(cfg, batch, params0, True)
    times = time_rounds(sides, args.warmup, args.steps, args.rounds)

    tokens_per_step = b * t
    fpt = flops_per_token(build_model(cfg.model).cfg, t)
    result = {
        "benchmark": "gpt2_train", "config": args.config, "batch": b, "seq": t, "vocab": v, "dtype": args.dtype,
        "params": int(sum(np.size(x) for x in jax.tree.leaves(params0))), **machine(),
        "command": "python -m bench.gpt2_train " + " ".join(argv if argv is not None else sys.argv[1:]),
        "flops_per_token_6N_12LHQT": fpt,
    }
    for name, ts in times.items():
        med = statistics.median(ts)
        result[name] = {"step_s_median": med, "step_s_min": min(ts), "step_s_max": max(ts),
                        "tokens_per_s": tokens_per_step / med}
    result["speedup_vs_torch_eager"] = result["torch_eager"]["step_s_median"] / result["flax_lm"]["step_s_median"]
    if args.torch_compile:
        result["speedup_vs_torch_compile"] = (
            result["torch_compile"]["step_s_median"] / result["flax_lm"]["step_s_median"])
    publish(result, args.json, None if args.no_record else record)
    return result


def record(r: dict) -> None:
    """Adds one row to the GPT-2 training table of bench/RESULTS.md."""
    compiled = f"{r['speedup_vs_torch_compile']:.2f}x" if "speedup_vs_torch_compile" in r else "-"
    add_row("## Training throughput, GPT-2", "",
            f"| {r['date']} | {r['config']} B={r['batch']} T={r['seq']} V={r['vocab']} {r['dtype']} | {r['device']}, "
            f"{r['cores']} cores | {r['flax_lm']['tokens_per_s']:,.0f} | {r['torch_eager']['tokens_per_s']:,.0f} | "
            f"**{r['speedup_vs_torch_eager']:.2f}x** | {compiled} | jax {r['versions']['jax']}, torch "
            f"{r['versions']['torch']} | `{r['command']}` |")


if __name__ == "__main__":
    main()
