"""Which flax_lm model family serves which Hugging Face architecture."""

from flax_lm.errors import UserError
from flax_lm.interop import gpt2
from flax_lm.models import gpt2 as gpt2_model

# HF architecture -> (family, interop module, model config class)
ARCHITECTURES = {gpt2.ARCHITECTURE: ("gpt2", gpt2, gpt2_model.GPT2Config)}
FAMILIES = {family: (arch, module, config_cls) for arch, (family, module, config_cls) in ARCHITECTURES.items()}


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
    """(architecture, interop module, model config class) for a flax_lm model family."""
    if family not in FAMILIES:
        raise UserError(f"model family {family!r} cannot be exported yet")
    return FAMILIES[family]
