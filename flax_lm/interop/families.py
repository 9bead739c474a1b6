"""Which flax_lm model family serves which Hugging Face architecture."""

from flax_lm.errors import UserError
from flax_lm.interop import gpt2

# HF architecture -> (flax_lm model family, interop module)
ARCHITECTURES = {gpt2.ARCHITECTURE: ("gpt2", gpt2)}
FAMILIES = {family: (arch, module) for arch, (family, module) in ARCHITECTURES.items()}


def for_hf_config(hf_config: dict):
    """(architecture, interop module) for a config.json; unsupported ones are refused."""
    archs = hf_config.get("architectures") or []
    if not archs and hf_config.get("model_type") == "gpt2":
        archs = [gpt2.ARCHITECTURE]
    for arch in archs:
        if arch in ARCHITECTURES:
            return arch, ARCHITECTURES[arch][1]
    raise UserError(f"architecture {', '.join(archs) or 'unknown'} is not supported; flax_lm imports "
                    f"{', '.join(sorted(ARCHITECTURES))}")


def for_family(family: str):
    """(HF architecture, interop module) for a flax_lm model family."""
    if family not in FAMILIES:
        raise UserError(f"model family {family!r} has no Hugging Face mapping yet")
    return FAMILIES[family]
