"""T5-base (220M parameters: 12 + 12 layers, d_model 768, 12 heads, d_ff 3072) pre-trained by span
corruption with layers scanned, parameters sharded over the data-parallel devices; see
`flax_lm.config.recipes.t5_span_corruption`. For the T5 v1.1 variant set model.feed_forward=gated-gelu,
model.d_ff=2048 and model.tie_word_embeddings=False."""

from flax_lm.config import recipes


def get_config():
    c = recipes.t5_span_corruption(d_model=768, n_layers=12, n_heads=12, d_ff=3072, scan_layers=True)
    c.parallel.update(data=1, fsdp=-1)
    return c
