"""CPU: for tests and learning. Correct and reasonable; what stays here earned its place by an
A/B on a CPU train or decode step (bench/RESULTS.md, "CPU backend")."""

import jax

from flax_lm.backends.base import Backend


class CpuBackend(Backend):
    name = "cpu"

    def attention(self, *, dtype, head_dim: int, bias: bool, cache: bool) -> str:
        """The explicit implementation: its hand-written backward pass runs faster on XLA:CPU
        than XLA's derivative of its own attention."""
        del dtype, head_dim, bias, cache
        return "explicit"

    def update_if_finite(self, finite, update, *old):
        """A `lax.cond`: with the select, XLA:CPU recomputes the new Adam moments inside the
        parameter update and copies the old ones to keep them alive."""
        return jax.lax.cond(finite, update, lambda *kept: kept, *old)

    def scan_unroll(self, n_layers: int) -> int:
        """All layers in one iteration: XLA:CPU runs a rolled loop's bookkeeping (each layer's
        weights sliced out of the stacks, its residuals written into theirs) as passes of their
        own. The parameters stay stacked, so a checkpoint moves between platforms as it is."""
        return n_layers


def use_cross_process_collectives() -> None:
    """CPU processes of one run exchange collectives over gloo (XLA:CPU has no other cross-process
    implementation). The setting configures only the CPU backend: other platforms are unaffected."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
