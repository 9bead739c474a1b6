"""A Llama-style decoder of GPT-2 small's class (125M parameters: d_model 768, 12 layers, 12
query heads sharing 4 key/value heads, SwiGLU width 2048, an untied 32,000-token head) at
context 1024, for GPUs and TPUs.

Point data.source at real text (and data.tokenizer at a 32,000-token tokenizer.json, or let
one be trained) for a real pre-training run.
"""

from flax_lm.config import recipes


def get_config():
    c = recipes.gpt2_openwebtext(steps=600_000, grad_accum_steps=1, learning_rate=6e-4)
    c.model.update(family="llama", vocab_size=32000, max_len=1024, d_model=768, n_layers=12, n_heads=12,
                   n_kv_heads=4, d_ff=2048, dtype="bfloat16", scan_layers=True, remat_policy="none")
    return c
