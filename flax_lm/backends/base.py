"""The portable backend: plain XLA forms, what every accelerator runs well.

A platform's backend subclasses `Backend` and overrides only where it measured a difference.
"""

import jax
import jax.numpy as jnp


class Backend:
    """What the model, loss, step and decoding code ask of a platform."""

    name = "portable"
    # Pallas kernels (splash attention) run compiled only where Mosaic lowers them; elsewhere in
    # interpret mode, slow but the same kernel.
    compiles_pallas = False
    # What `dot_product_attention` uses where the requested splash kernel does not apply.
    attention_fallback = "xla"

    def attention(self, *, dtype, head_dim: int, bias: bool, cache: bool) -> str:
        """The implementation `model.attention="auto"` stands for, given the call: `dtype` of the
        queries, `head_dim`, whether a bias is added and whether queries read a decoding cache."""
        del dtype, head_dim, bias, cache
        return "xla"

    def loss_chunk_len(self) -> int:
        """Sequence positions per chunk of the fused output-projection loss that
        `train.loss_chunk_len=-1` stands for (0: unchunked). 16 keeps the B x T x V logits
        from ever being materialised, which bounds the loss's memory on every platform."""
        return 16

    def update_if_finite(self, finite, update, *old):
        """update(*old) where the scalar `finite` is true, else `old` unchanged: an elementwise
        select, which accelerators fuse into the update (a conditional would read the predicate
        back to the host in the middle of the step)."""
        return jax.tree.map(lambda new, kept: jnp.where(finite, new, kept), update(*old), old)

    def scan_unroll(self, n_layers: int) -> int:
        """Layers per iteration of a scan over `n_layers`: one, a loop the compiler keeps rolled."""
        del n_layers
        return 1
