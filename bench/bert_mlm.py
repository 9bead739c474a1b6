"""Masked-LM pre-training throughput: flax_lm BERT against transformers.BertForMaskedLM (PyTorch).

Both sides train the same architecture from the same weights on the same batch: sequences of
--seq-len tokens with 15% of them masked (at most --predictions a sequence), AdamW and global-norm
clipping. flax_lm projects onto the vocabulary only at the masked positions; transformers
projects every position and ignores the unmasked ones in the loss (label -100), as its
`BertForMaskedLM` does. Rounds alternate between the sides.

    python -m bench bert-mlm --config bert_base [--batch 8] [--seq-len 128] [--dtype bfloat16]
        [--steps 3] [--rounds 3] [--torch-compile] [--json PATH] [--no-record] [--config.key=value ...]
"""

import jax
import numpy as np

from bench import harness
from flax_lm.config import load as config_lib
from flax_lm.interop import bert as interop

TABLE = harness.Table("## Masked-LM pre-training throughput, BERT", [
    *harness.DATE,
    ("model, batch, seq, masked, dtype",
     lambda r: f"{r['config']} B={r['batch']} T={r['seq_len']} P={r['predictions']} {r['dtype']}"),
    *harness.DEVICE,
    ("flax_lm sequences/s", lambda r: f"{r['flax_lm']['sequences_per_sec']:.2f}"),
    ("torch eager sequences/s", lambda r: f"{r['torch_eager']['sequences_per_sec']:.2f}"),
    ("vs eager", lambda r: harness.speedup(r, "speedup_vs_torch_eager")),
    ("vs torch.compile", lambda r: harness.speedup(r, "speedup_vs_torch_compile") if "torch_compile" in r else "-"),
    *harness.STEP_TIME, *harness.MFU, *harness.MEMORY_AND_RUN,
])


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


def torch_trainer(cfg, batch: dict, params0, model_cfg, device, compile_model: bool):
    """The PyTorch side: one training step of BertForMaskedLM on `batch`, blocking."""
    import torch
    import transformers
    hf_cfg = transformers.BertConfig(**interop.config_to_hf(model_cfg))
    hf_cfg._attn_implementation = "sdpa"
    model = transformers.BertForMaskedLM(hf_cfg)
    state_dict = {k: torch.from_numpy(np.array(v)) for k, v in interop.params_to_hf(params0, model_cfg,
                                                                                     "masked_lm").items()}
    model.load_state_dict(state_dict, strict=False)
    model.to(device).train()
    forward = torch.compile(model) if compile_model else model
    inputs = {k: torch.from_numpy(batch[k]).long().to(device) for k in ("input_ids", "token_type_ids",
                                                                         "attention_mask")}
    labels = torch.full_like(inputs["input_ids"], -100)
    labels.scatter_(1, torch.from_numpy(batch["masked_positions"]).long().to(device),
                    torch.from_numpy(batch["masked_ids"]).long().to(device))

    def loss():
        with harness.torch_autocast(device, cfg.model.dtype):
            return forward(**inputs, labels=labels).loss
    return harness.torch_train_step(model, harness.torch_adamw(model, cfg.optim), loss, cfg.optim.grad_clip_norm)


def main(argv: list[str] | None = None, prog: str = "python -m bench.bert_mlm") -> dict:
    """Runs the benchmark with command-line `argv`; returns the result (also printed as JSON)."""
    parser = harness.parser(prog, __doc__, config="bert_base", batch=8, seq_len=128, steps=3, warmup=2, rounds=3,
                            seq_help="tokens per sequence")
    parser.add_argument("--predictions", type=int, default=20, help="masked positions a sequence (default: 20)")
    args, overrides = harness.parse(parser, argv)
    device = harness.torch_setup()
    # dropout off on both sides (the two libraries' dropout masks differ anyway), MLM only
    cfg = config_lib.load(args.config, overrides + [
        f"--config.model.dtype={args.dtype}", "--config.model.dropout=0.0", "--config.model.attention_dropout=0.0",
        "--config.data.nsp=false", f"--config.train.batch_size={args.batch}", "--config.train.grad_accum_steps=1",
        f"--config.data.max_predictions={args.predictions}", "--config.optim.warmup_steps=0"])
    batch = masked_batch(args.batch, args.seq_len, cfg.model.vocab_size, args.predictions, np.random.RandomState(0))
    jax_step, params0, model_cfg = harness.flax_trainer(cfg, batch, args.seq_len)
    sides = {"flax_lm": jax_step, "torch_eager": torch_trainer(cfg, batch, params0, model_cfg, device, False)}
    if args.torch_compile:
        sides["torch_compile"] = torch_trainer(cfg, batch, params0, model_cfg, device, True)
    times = harness.time_rounds(sides, args.warmup, args.steps, args.rounds)

    n_params = int(sum(np.size(x) for x in jax.tree.leaves(params0)))
    result = {"benchmark": "bert_mlm", "config": args.config, "batch": args.batch, "seq_len": args.seq_len,
              "predictions": args.predictions, "dtype": args.dtype, "params": n_params,
              **harness.summarize(times, args.batch * args.seq_len, args.batch, torch_device=device,
                                  peak_flops=args.peak_flops,
                                  flops=harness.flops_per_token(model_cfg, n_params, args.seq_len)),
              "command": harness.command_line(prog, argv)}
    harness.publish(result, args.json, None if args.no_record else TABLE.record)
    return result


if __name__ == "__main__":
    main()
