"""TPU: splash attention (the Pallas flash kernel) is what `attention="auto"` means."""

from flax_lm.backends.base import Backend


class TpuBackend(Backend):
    name = "tpu"
    compiles_pallas = True

    def attention(self, *, dtype, head_dim: int, bias: bool, cache: bool) -> str:
        """Splash attention; `dot_product_attention` falls back to XLA's where the kernel does not
        apply (a bias, a decoding cache, lengths off its 128 grid) and says so once."""
        del dtype, head_dim, bias, cache
        return "splash"
