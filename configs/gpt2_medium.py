"""GPT-2 medium (355M parameters) at context 1024."""

from flax_lm.config import recipes


def get_config():
    c = recipes.gpt2_openwebtext(steps=400_000, grad_accum_steps=2, learning_rate=3e-4)
    c.model.update(vocab_size=50257, max_len=1024, d_model=1024, n_layers=24, n_heads=16,
                   dtype="bfloat16", scan_layers=True, remat_policy="dots_no_batch")
    return c
