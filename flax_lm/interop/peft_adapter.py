"""LoRA adapters as an HF PEFT adapter directory (adapter_config.json, adapter_model.safetensors).

PEFT stores lora_A.weight (r, in) and lora_B.weight (out, r) for each adapted torch layer;
flax_lm stores lora_a (*in, r) and lora_b (r, *out), so each is flattened and transposed (GPT-2's
Conv1D layers take the same layout, with fan_in_fan_out set). Which torch layer a flax_lm adapter
belongs to is read from the family's own weight mapping (`params_to_hf`): each adapted kernel (or
fused slice, or stacked layer) is marked with its own number in an otherwise zero tree, and the
torch weight that carries the number is that layer. Task heads are saved whole, as PEFT's
modules_to_save. `read_adapter` and `adapter_params` are the way back, for `flax-lm import --peft`.
"""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import safetensors.numpy

from flax_lm.errors import UserError
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


def _site_modules(params: dict, model_cfg, head: str, settings: lora.LoraSettings, to_hf):
    """(base tree, adapter tree, [(site, HF module name)]) of a LoRA parameter tree: each adapted
    kernel (or fused slice, or stacked layer) is marked with its own number in an otherwise zero
    base tree, and the torch weight that `to_hf` puts the number in is that site's layer."""
    base, adapters = lora.split(jax.tree.map(np.asarray, params))
    sites = _sites(adapters, base, settings)
    marked = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), base)
    for number, (path, suffix, index, layer) in enumerate(sites, start=1):
        where = (() if layer is None else (layer,))
        if index is not None:
            n_in = adapters_a(adapters, path, suffix).ndim - 1 - (layer is not None)
            where = where + (slice(None),) * n_in + (index,)
        _at(marked, path)["kernel"][where] = number
    module_of = {}
    for key, w in to_hf(marked, model_cfg, head).items():
        if key.endswith(".weight") and w.size and w.max() >= 1 and w.min() == w.max():
            module_of[int(w.max())] = key.removesuffix(".weight")
    return base, adapters, [(site, module_of[number]) for number, site in enumerate(sites, start=1)]


def adapter_tensors(params: dict, model_cfg, head: str, settings: lora.LoraSettings, to_hf) -> tuple[dict, dict]:
    """({PEFT key: tensor}, {"target_modules", "modules_to_save"}) of a LoRA parameter tree; `to_hf`
    is the family's `params_to_hf(params, model_cfg, head)`."""
    base, adapters, site_modules = _site_modules(params, model_cfg, head, settings, to_hf)
    tensors, targets = {}, set()
    for (path, suffix, index, layer), module in site_modules:
        a = adapters_a(adapters, path, suffix)
        b = _at(adapters, path)["lora_b" + suffix]
        if layer is not None:
            a, b = a[layer], b[layer]
        a2 = a.reshape(-1, a.shape[-1])
        b2 = b.reshape(b.shape[0], -1)
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


# adapter_config.json settings that change what the adapter computes and flax_lm's LoRA does not do:
# any of them set (true, non-empty) refuses the import rather than giving other logits.
_UNSUPPORTED = ("use_dora", "use_rslora", "use_qalora", "use_bdlora", "lora_bias", "rank_pattern", "alpha_pattern",
                "layers_to_transform", "layer_replication", "target_parameters", "trainable_token_indices",
                "alora_invocation_tokens", "arrow_config", "kasa_config", "velora_config", "monteclora_config",
                "astra_config")


@dataclasses.dataclass(frozen=True)
class PeftAdapter:
    """A PEFT LoRA adapter directory as read: rank, alpha, dropout; `lora` maps each adapted torch
    module (its name in the base model, without PEFT's prefix) to (lora_A (r, in), lora_B (out, r));
    `heads` the modules_to_save tensors by their base-model key."""
    rank: int
    alpha: float
    dropout: float
    lora: dict
    heads: dict

    def targets(self) -> tuple[str, ...]:
        """PEFT's module names of the adapted layers (the last part of each module's name)."""
        return tuple(sorted({m.rsplit(".", 1)[-1] for m in self.lora}))


def read_adapter(directory) -> PeftAdapter:
    """The adapter of a PEFT directory (adapter_config.json, adapter_model.safetensors); anything
    but plain LoRA (another peft_type, DoRA, rsLoRA, rank or alpha patterns, trained biases) is a
    UserError naming the setting."""
    directory = Path(directory)
    config_file, weights = directory / "adapter_config.json", directory / "adapter_model.safetensors"
    if not config_file.is_file():
        raise UserError(f"--peft {directory}: no adapter_config.json (a PEFT adapter directory has it)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"--peft {config_file}: not valid JSON ({e})") from None
    if config.get("peft_type") != "LORA":
        raise UserError(f"--peft {directory}: peft_type {config.get('peft_type')!r} is not supported; flax_lm "
                        f"imports LORA adapters")
    for name in _UNSUPPORTED:
        if config.get(name):
            raise UserError(f"--peft {directory}: {name}={config[name]!r} is not supported; flax_lm imports plain "
                            f"LoRA adapters")
    if config.get("bias", "none") != "none":
        raise UserError(f"--peft {directory}: bias={config['bias']!r} is not supported (flax_lm's LoRA trains no "
                        f"biases: bias 'none')")
    if not weights.is_file():
        raise UserError(f"--peft {directory}: no adapter_model.safetensors")
    try:
        tensors = safetensors.numpy.load_file(str(weights))
    except Exception as e:  # truncated or corrupt files raise several error types
        raise UserError(f"--peft {weights}: cannot read the safetensors file ({e})") from None
    pairs, heads = {}, {}
    for key, value in tensors.items():
        key = key.removeprefix(PREFIX)
        for part in ("A", "B"):
            if key.endswith(f".lora_{part}.weight"):
                pairs.setdefault(key.removesuffix(f".lora_{part}.weight"), {})[part] = value
                break
        else:
            if key.split(".")[0] not in HEAD_MODULES:
                raise UserError(f"--peft {directory}: tensor {key!r} is not a LoRA weight or a task head flax_lm "
                                f"trains in full ({', '.join(HEAD_MODULES)}); this adapter is not supported")
            heads[key] = value
    if not pairs:
        raise UserError(f"--peft {directory}: adapter_model.safetensors holds no lora_A/lora_B weights")
    rank = int(config["r"])
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"} or pair["A"].shape[0] != rank or pair["B"].shape[-1] != rank:
            raise UserError(f"--peft {directory}: module {module} needs lora_A (r, in) and lora_B (out, r) with "
                            f"r={rank}; it has {({k: v.shape for k, v in pair.items()})}")
    return PeftAdapter(rank, float(config["lora_alpha"]), float(config.get("lora_dropout", 0.0)),
                       {m: (p["A"], p["B"]) for m, p in pairs.items()}, heads)


def adapter_params(params: dict, model_cfg, head: str, settings: lora.LoraSettings, to_hf,
                   adapter: PeftAdapter) -> dict:
    """The adapter leaves (as `lora.split` gives them) of `params`, a LoRA parameter tree of the
    model (e.g. fresh), with the adapter's tensors in place: the inverse of `adapter_tensors`.
    Every adapted layer of the model must have its tensors in the adapter and every adapter
    tensor its layer in the model."""
    _, adapters, site_modules = _site_modules(params, model_cfg, head, settings, to_hf)
    adapters = jax.tree.map(np.array, adapters)  # writable copies
    unused = set(adapter.lora)
    for (path, suffix, index, layer), module in site_modules:
        # a model with a head names its base model's modules with a prefix (transformer., bert.)
        # that an adapter of the base model lacks, or the other way round
        found = [m for m in adapter.lora if m == module or module.endswith("." + m) or m.endswith("." + module)]
        if len(found) != 1:
            raise UserError(f"the PEFT adapter has no lora_A/lora_B for {module} (flax_lm adapts every "
                            f"{module.rsplit('.', 1)[-1]} layer); layers left out are not supported")
        unused.discard(found[0])
        lora_a, lora_b = adapters_a(adapters, path, suffix), _at(adapters, path)["lora_b" + suffix]
        a_slot, b_slot = (lora_a, lora_b) if layer is None else (lora_a[layer], lora_b[layer])
        a_in, b_out = adapter.lora[found[0]]
        if a_in.size != a_slot.size or b_out.size != b_slot.size:
            raise UserError(f"the PEFT adapter's {found[0]} has lora_A {a_in.shape} and lora_B {b_out.shape}; the "
                            f"model's layer needs {a_slot.size // settings.rank} inputs and "
                            f"{b_slot.size // settings.rank} outputs")
        a_slot[...] = a_in.T.reshape(a_slot.shape)
        b_slot[...] = b_out.T.reshape(b_slot.shape)
    if unused:
        raise UserError(f"the PEFT adapter's {', '.join(sorted(unused))} match no layer flax_lm adapts with "
                        f"peft.targets={','.join(settings.targets)}")
    return adapters
