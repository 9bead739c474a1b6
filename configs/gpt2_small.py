"""GPT-2 small (124M parameters), the GPT-2 paper's smallest model, at context 1024.

Point data.source at real text (and a 50257-token tokenizer.json via data.tokenizer
for the original vocabulary) for a real pre-training run.
"""

from flax_lm.config import recipes


def get_config():
    c = recipes.gpt2_openwebtext(steps=600_000, grad_accum_steps=4, learning_rate=6e-4)
    c.model.update(vocab_size=50257, max_len=1024, d_model=768, n_layers=12, n_heads=12,
                   dtype="bfloat16", scan_layers=True, remat_policy="dots_no_batch")
    return c
