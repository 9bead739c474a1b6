"""Masked-LM pre-training throughput: flax_lm BERT against transformers.BertForMaskedLM (PyTorch).

Both sides train the same architecture from the same weights on the same batch: sequences of
--seq tokens with 15% of them masked (at most --predictions a sequence), AdamW and global-norm
clipping. flax_lm projects onto the vocabulary only at the masked positions; transformers
projects every position and ignores the unmasked ones in the loss (label -100), as its
`BertForMaskedLM` does. Rounds alternate between the sides.

    python -m bench.bert_mlm --config bert_base [--batch 8] [--seq 128] [--steps 3] [--rounds 3]
"""

import argparse
import os
import statistics
import sys

import jax
import numpy as np

from bench.harness import add_row, machine, publish, time_rounds, torch_train_step
from flax_lm import config as config_lib
from flax_lm import mesh as mesh_lib
from flax_lm import optim, state_init
from flax_lm.interop import bert as interop
from flax_lm.models import build_model, flops_per_token, head_name
from flax_lm.tasks import get_task
from flax_lm.train_step import make_train_step

TABLE_HEADING = "## Masked-LM pre-training throughput, BERT (flax_lm vs transformers.BertForMaskedLM, fp32)"


def masked_batch(batch: int, seq: int, vocab: int, predictions: int, rng: np.random.RandomState) -> dict:
    """Random tokens, `predictions` distinct masked positions a row (never [CLS] at 0)."""
    ids = rng.randint(5, vocab, (batch, seq)).astype(np.int32)
    positions = np.sort(np.stack([rng.choice(np.arange(1, seq), predictions, replace=False) for _ in range(batch)]),
                        axis=1).astype(np.int32)
    targets = np.take_along_axis(ids, positions, axis=1)
    inputs = ids.copy()
    np.put_along_axis(inputs, positions, 4, axis=1)  # [MASK]
    return {"input_ids": inputs, "token_type_ids": np.zeros_like(inputs), "attention_mask": np.ones_like(inputs),
            "masked_positions": positions, "masked_ids": targets,
            "masked_weights": np.ones((batch, predictions), np.float32), "weights": np.ones(batch, np.float32)}


def flax_trainer(cfg, batch):
    cfg.parallel.update(data=1, fsdp=1, tensor=1)
    mesh = mesh_lib.make_mesh(cfg, jax.devices()[:1])
    model = build_model(cfg.model, head_name(cfg))
    tx = optim.make_optimizer(cfg.optim, cfg.train.steps, cfg.model.n_layers)
    schedule = optim.learning_rate_schedule(cfg.optim, cfg.train.steps)
    seq = batch["input_ids"].shape[1]
    _, shardings = state_init.state_shardings(model, tx, mesh, 0, seq)
    state = state_init.create_state(model, tx, mesh, 0, seq, shardings)
    step_fn = jax.jit(make_train_step(model, get_task(cfg), tx, schedule, 1), donate_argnums=0)
    device_batch = jax.device_put(batch)
    params0 = jax.tree.map(np.asarray, jax.device_get(state.params))
    holder = {"state": state}

    def step():
        holder["state"], metrics = step_fn(holder["state"], device_batch)
        jax.block_until_ready(metrics["loss"])
    return step, params0, model.cfg


def torch_trainer(cfg, batch, params0, model_cfg):
    import torch
    import transformers
    hf_cfg = transformers.BertConfig(**interop.config_to_hf(model_cfg))
    hf_cfg._attn_implementation = "sdpa"
    model = transformers.BertForMaskedLM(hf_cfg)
    state_dict = {k: torch.from_numpy(np.array(v)) for k, v in interop.params_to_hf(params0, model_cfg,
                                                                                     "masked_lm").items()}
    model.load_state_dict(state_dict, strict=False)
    model.train()
    o = cfg.optim
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=o.learning_rate, betas=(o.b1, o.b2),
                            eps=o.eps)
    inputs = {k: torch.from_numpy(batch[k]).long() for k in ("input_ids", "token_type_ids", "attention_mask")}
    labels = torch.full_like(inputs["input_ids"], -100)
    labels.scatter_(1, torch.from_numpy(batch["masked_positions"]).long(), torch.from_numpy(batch["masked_ids"]).long())

    return torch_train_step(model, opt, lambda: model(**inputs, labels=labels).loss, o.grad_clip_norm)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bert_base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20, help="masked positions a sequence")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(os.cpu_count())

    # fp32 on both sides, dropout off (the two libraries' dropout masks differ anyway), MLM only
    cfg = config_lib.load(args.config, [
        "--config.model.dtype=float32", "--config.model.dropout=0.0", "--config.data.nsp=false",
        f"--config.train.batch_size={args.batch}", f"--config.data.max_predictions={args.predictions}",
        "--config.optim.warmup_steps=0"])
    batch = masked_batch(args.batch, args.seq, cfg.model.vocab_size, args.predictions, np.random.RandomState(0))
    jax_step, params0, model_cfg = flax_trainer(cfg, batch)
    sides = {"flax_lm": jax_step, "torch_eager": torch_trainer(cfg, batch, params0, model_cfg)}
    times = time_rounds(sides, args.warmup, args.steps, args.rounds)

    result = {"benchmark": "bert_mlm", "config": args.config, "batch": args.batch, "seq": args.seq,
              "predictions": args.predictions, "dtype": "float32",
              "params": int(sum(np.size(x) for x in jax.tree.leaves(params0))), **machine(),
              "flops_per_token": flops_per_token(model_cfg, args.seq),
              "command": "python -m bench.bert_mlm " + " ".join(argv if argv is not None else sys.argv[1:])}
    for name, ts in times.items():
        med = statistics.median(ts)
        result[name] = {"step_s_median": med, "step_s_min": min(ts), "step_s_max": max(ts),
                        "sequences_per_s": args.batch / med}
    result["speedup_vs_torch_eager"] = result["torch_eager"]["step_s_median"] / result["flax_lm"]["step_s_median"]
    publish(result, args.json, None if args.no_record else record)
    return result


def record(r: dict) -> None:
    """Adds one row to the BERT table of bench/RESULTS.md."""
    add_row(TABLE_HEADING, "| date | model, batch, seq, masked | device | flax_lm sequences/s | "
            "torch eager sequences/s | vs eager | versions | command |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {r['date']} | {r['config']} B={r['batch']} T={r['seq']} P={r['predictions']} | {r['device']}, "
            f"{r['cores']} cores | {r['flax_lm']['sequences_per_s']:.2f} | {r['torch_eager']['sequences_per_s']:.2f} "
            f"| **{r['speedup_vs_torch_eager']:.2f}x** | jax {r['versions']['jax']}, torch {r['versions']['torch']} "
            f"| `{r['command']}` |")


if __name__ == "__main__":
    main()
