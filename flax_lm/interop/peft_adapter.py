"""LoRA adapters as an HF PEFT adapter directory (adapter_config.json, adapter_model.safetensors).

PEFT stores lora_A.weight (r, in) and lora_B.weight (out, r) for each adapted torch layer;
flax_lm stores lora_a (*in, r) and lora_b (r, *out), so each is flattened and transposed (GPT-2's
Conv1D layers take the same layout, with fan_in_fan_out set). Which torch layer a flax_lm adapter
belongs to is read from the family's own weight mapping (`params_to_hf`): each adapted kernel (or
fused slice, or stacked layer) is marked with its own number in an otherwise zero tree, and the
torch weight that carries the number is that layer. Task heads are saved whole, as PEFT's
modules_to_save.
"""

import json
from pathlib import Path

import jax
import numpy as np
import safetensors.numpy

from flax_lm.models import DECODERS, lora

PREFIX = "base_model.model."
HEAD_MODULES = ("classifier", "qa_outputs")  # HF names of the task heads flax_lm trains in full


def _sites(adapters: dict, params: dict, settings: lora.LoraSettings, path=()):
    """[(scope path, adapter suffix, fused slice index or None, layer index or None)] of the adapters."""
    out = []
    for k, v in adapters.items():
        if not isinstance(v, dict):
            continue
        names = [n for n in v if n.startswith("lora_a")]
        if not names:
            out += _sites(v, params[k], settings, path + (k,))
            continue
        kernel = params[k]["kernel"]
        for name in names:
            suffix = name[len("lora_a"):]
            index = lora.FUSED_SLICES[settings.family][suffix[1:]][1] if suffix else None
            a, b = v[name], v["lora_b" + suffix]
            stacked = a.ndim + b.ndim - 2 == kernel.ndim - (index is not None) + 1
            for layer in range(a.shape[0]) if stacked else (None,):
                out.append((path + (k,), suffix, index, layer))
    return out


def adapter_tensors(params: dict, model_cfg, head: str, settings: lora.LoraSettings, to_hf) -> tuple[dict, dict]:
    """({PEFT key: tensor}, {"target_modules", "modules_to_save"}) of a LoRA parameter tree; `to_hf`
    is the family's `params_to_hf(params, model_cfg, head)`."""
    base, adapters = lora.split(jax.tree.map(np.asarray, params))
    sites = _sites(adapters, base, settings)
    marked = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), base)
    for number, (path, _, index, layer) in enumerate(sites, start=1):
        scope = marked
        for k in path:
            scope = scope[k]
        where = (() if layer is None else (layer,))
        if index is not None:
            n_in = adapters_a(adapters, path, sites[number - 1][1]).ndim - 1 - (layer is not None)
            where = where + (slice(None),) * n_in + (index,)
        scope["kernel"][where] = number
    hf_marked = to_hf(marked, model_cfg, head)
    module_of = {}
    for key, w in hf_marked.items():
        if key.endswith(".weight") and w.size and w.max() >= 1 and w.min() == w.max():
            module_of[int(w.max())] = key.removesuffix(".weight")
    tensors, targets = {}, set()
    for number, (path, suffix, index, layer) in enumerate(sites, start=1):
        a = adapters_a(adapters, path, suffix)
        b = _at(adapters, path)["lora_b" + suffix]
        if layer is not None:
            a, b = a[layer], b[layer]
        a2 = a.reshape(-1, a.shape[-1])
        b2 = b.reshape(b.shape[0], -1)
        module = module_of[number]
        tensors[PREFIX + module + ".lora_A.weight"] = np.ascontiguousarray(a2.T.astype(np.float32))
        tensors[PREFIX + module + ".lora_B.weight"] = np.ascontiguousarray(b2.T.astype(np.float32))
        targets.add(module.rsplit(".", 1)[-1])
    hf = to_hf(base, model_cfg, head)
    saved = sorted({k.split(".")[0] for k in hf if k.split(".")[0] in HEAD_MODULES})
    for key, w in hf.items():
        if key.split(".")[0] in saved:
            tensors[PREFIX + key] = np.ascontiguousarray(np.asarray(w, np.float32))
    return tensors, {"target_modules": sorted(targets), "modules_to_save": saved or None}


def _at(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def adapters_a(adapters, path, suffix):
    return _at(adapters, path)["lora_a" + suffix]


def task_type(family: str, head: str) -> str:
    """PEFT's task_type for a flax_lm family and head."""
    if family in DECODERS:
        return "CAUSAL_LM"
    if family == "t5":
        return "SEQ_2_SEQ_LM"
    return {"sequence_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS",
            "question_answering": "QUESTION_ANS"}.get(head, "FEATURE_EXTRACTION")


def write_adapter(out_dir, params: dict, model_cfg, head: str, settings: lora.LoraSettings, to_hf,
                  base_model: str | None = None) -> Path:
    """Writes the directory that `peft.PeftModel.from_pretrained(base, out_dir)` loads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors, modules = adapter_tensors(params, model_cfg, head, settings, to_hf)
    safetensors.numpy.save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": task_type(settings.family, head), "r": settings.rank,
              "lora_alpha": settings.alpha, "lora_dropout": settings.dropout, **modules,
              "fan_in_fan_out": settings.family == "gpt2", "bias": "none", "base_model_name_or_path": base_model,
              "inference_mode": True}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
