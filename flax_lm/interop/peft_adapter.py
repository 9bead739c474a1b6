"""Writes LoRA adapters as an HF PEFT adapter directory (adapter_config.json, adapter_model.safetensors).

PEFT stores lora_A.weight (rank, in) and lora_B.weight (out, rank) for each adapted torch layer;
flax_lm stores lora_a (in, rank) and lora_b (rank, *out), so each is flattened and transposed.
Only GPT-2 (whose c_attn is a Conv1D, hence fan_in_fan_out) is mapped here.
"""

import json
from pathlib import Path

import numpy as np
import safetensors.numpy


def gpt2_adapter_tensors(params: dict, n_layers: int) -> dict[str, np.ndarray]:
    """PEFT's key names and layouts for adapters on GPT-2's c_attn (layers h_0 .. h_{n-1})."""
    out = {}
    for i in range(n_layers):
        scope = params[f"h_{i}"]["attn"]["c_attn"]
        a = np.asarray(scope["lora_a"])
        b = np.asarray(scope["lora_b"]).reshape(a.shape[1], -1)
        prefix = f"base_model.model.transformer.h.{i}.attn.c_attn."
        out[prefix + "lora_A.weight"] = np.ascontiguousarray(a.T)
        out[prefix + "lora_B.weight"] = np.ascontiguousarray(b.T)
    return out


def write_gpt2_adapter(out_dir, params: dict, n_layers: int, rank: int, alpha: float, dropout: float = 0.0) -> Path:
    """Writes the adapter directory that `peft.PeftModel.from_pretrained(GPT2LMHeadModel, out_dir)` loads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(gpt2_adapter_tensors(params, n_layers), str(out / "adapter_model.safetensors"),
                                metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
              "lora_dropout": dropout, "target_modules": ["c_attn"], "fan_in_fan_out": True,
              "bias": "none", "base_model_name_or_path": None, "inference_mode": True}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
