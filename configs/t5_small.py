"""T5-small (60M parameters: 6 + 6 layers, d_model 512, 8 heads, d_ff 2048) pre-trained by span
corruption; see `flax_lm.config.recipes.t5_span_corruption`."""

from flax_lm.config import recipes


def get_config():
    return recipes.t5_span_corruption(d_model=512, n_layers=6, n_heads=8, d_ff=2048, scan_layers=False)
