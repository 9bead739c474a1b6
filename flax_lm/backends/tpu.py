"""TPU: splash attention (the Pallas flash kernel) is what `attention="auto"` means, recompute
attention where splash does not apply, and the loss unchunked: each what the TPU compiler's cost
model measured fastest (bench/RESULTS.md, "TPU modelled step")."""

import importlib.util
import os

from flax_lm.backends import tpu_topology
from flax_lm.backends.base import Backend
from flax_lm.errors import UserError

EXAMPLE_TOPOLOGIES = "v5e-4, v5e-8 (= v5litepod-8, v5e:2x4), v5p-8 (4 chips, v5p:2x2x1), v6e-8, v5p-128"


class TpuBackend(Backend):
    name = "tpu"
    compiles_pallas = True
    # Where memory traffic bounds attention (T=1024 at 8 sequences a chip), recomputing the scores
    # from q and k beats storing them: the Llama-style 125M step on v5e-4 models at 99.5 ms with
    # `recompute`, 116.7 ms with `explicit`, 133.1 ms with `xla`.
    attention_fallback = "recompute"

    def attention(self, *, dtype, head_dim: int, bias: bool, cache: bool) -> str:
        """Splash attention (causal or not, packed documents' segment ids, grouped-query heads);
        `dot_product_attention` falls back to `attention_fallback` where the kernel does not apply
        (a bias, a decoding cache, lengths off its 128 grid) and says so in one line, once."""
        del dtype, head_dim, bias, cache
        return "splash"

    def loss_chunk_len(self) -> int:
        """Unchunked: the chunked loop reads and writes the float32 V x D gradient accumulator once
        a chunk (GPT-2 124M on v5e-4, 8 x 1024 a chip: 64 chunks, about 46 GB more HBM traffic a
        chip, 177.0 ms against 114.9 ms a step modelled), while the whole B x T x V float32 logits
        (1.6 GB a chip there) fit in HBM beside the rest."""
        return 0


def topology_devices(name: str, num_slices: int = 1) -> list:
    """The devices of a TPU topology such as v5e-16 or v5e:4x4 (num_slices of them for multi-slice);
    the names are flax_lm.backends.tpu_topology's."""
    name = tpu_topology.libtpu_name(name)
    if importlib.util.find_spec("libtpu") is None:
        raise UserError("compiling for a TPU topology needs libtpu: pip install 'flax_lm[tpu]'")
    # Compiling touches no chip, so several processes may hold libtpu at once (a test and its subprocess).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies
        kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
        devices = list(topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs).devices)
    except Exception as e:  # libtpu reports an unknown name as a bare runtime error
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"--topology {name!r}: cannot make this TPU topology ({reason}); "
                        f"names look like {EXAMPLE_TOPOLOGIES}") from None
    if any(d.core_on_chip for d in devices):
        # libtpu describes v4 here core by core; meshes are built from one device per chip (megacore)
        raise UserError(f"--topology {name!r}: libtpu gives {len(devices)} cores, not one device per chip, "
                        f"which flax_lm's meshes need; names that work look like {EXAMPLE_TOPOLOGIES}")
    return devices


def on_tpu_vm() -> bool:
    """Whether this machine has TPU chips (JAX's own check, by PCI device ids): a Cloud TPU VM,
    whose workers JAX finds from the TPU metadata."""
    try:
        from jax._src import hardware_utils  # private; a JAX without it means no auto-detection
        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:
        return False
