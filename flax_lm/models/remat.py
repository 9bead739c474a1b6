"""Named rematerialisation policies for `nn.remat` over a Transformer block.

Blocks tag activations with `checkpoint_name`; policies choose what to keep.
"""

import jax

POLICIES = {
    "none": None,  # no remat: keep everything (fastest, most memory)
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_block_outputs": jax.checkpoint_policies.save_only_these_names("attn_out", "mlp_out"),
}
