"""Which flax_lm model family and head serve which Hugging Face architecture."""

from flax_lm.errors import UserError
from flax_lm.interop import bert, gpt2, llama, modernbert, qwen3, t5

_MODULES = {"gpt2": gpt2, "llama": llama, "qwen3": qwen3, "bert": bert, "modernbert": modernbert, "t5": t5}
# HF architecture -> (flax_lm model family, interop module, flax_lm head)
ARCHITECTURES = {arch: (family, module, head) for family, module in _MODULES.items()
                 for arch, head in module.ARCHITECTURES.items()}
# The decoders' headless classes: flax_lm holds one as the tied causal LM, whose head has no weights of its own.
BASE_DECODERS = {"GPT2Model": "gpt2", "LlamaModel": "llama"}
ARCHITECTURES.update({arch: (family, _MODULES[family], "") for arch, family in BASE_DECODERS.items()})
_MODEL_TYPES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
                "bert": "BertModel",
                "roberta": "RobertaModel", "modernbert": "ModernBertModel", "t5": "T5ForConditionalGeneration"}


def for_hf_config(hf_config: dict):
    """(architecture, interop module, head) for a config.json; unsupported ones are refused."""
    archs = hf_config.get("architectures") or []
    if not archs and hf_config.get("model_type") in _MODEL_TYPES:
        archs = [_MODEL_TYPES[hf_config["model_type"]]]
    for arch in archs:
        if arch in ARCHITECTURES:
            _, module, head = ARCHITECTURES[arch]
            return arch, module, head
    raise UserError(f"architecture {', '.join(archs) or 'unknown'} is not supported; flax_lm imports "
                    f"{', '.join(sorted(ARCHITECTURES))}")


def module_for(family: str):
    """The interop module of a flax_lm model family."""
    if family not in _MODULES:
        raise UserError(f"model family {family!r} has no Hugging Face mapping yet")
    return _MODULES[family]


def architecture(family: str, model_cfg, head: str) -> str:
    """The HF class name of a flax_lm model with `head` ("": the base model)."""
    if head == "" and family in BASE_DECODERS.values():
        return next(arch for arch, f in BASE_DECODERS.items() if f == family)
    return module_for(family).architecture(model_cfg, head)
