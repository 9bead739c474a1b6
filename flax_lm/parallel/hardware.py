"""What the hardware can do: peak dense bf16 FLOP/s per device kind, for model FLOPs utilisation
(MFU)."""

import jax

# Vendor dense (not sparse) bf16 peaks, per chip.
PEAK_BF16_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def peak_flops_per_device(override: float = 0.0) -> float | None:
    """The configured peak, else the table's entry for this device kind, else None (unknown, e.g. CPU)."""
    if override > 0:
        return override
    kind = jax.devices()[0].device_kind
    return PEAK_BF16_FLOPS.get(kind)
