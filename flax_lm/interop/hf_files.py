"""Reading Hugging Face model directories: where one is, its weights, its tokenizer.

`.bin` weights load only with `torch.load(weights_only=True)`; safetensors are
preferred whenever both exist.
"""

import json
from pathlib import Path

import numpy as np
import safetensors
from tokenizers import Tokenizer

from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.errors import UserError


def resolve_source(source: str) -> Path:
    """A local model directory, or a hub id downloaded through huggingface_hub."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/")) or source.count("/") > 1:
        raise UserError(f"--hf {source}: not a model directory")
    try:
        import huggingface_hub
        return Path(huggingface_hub.snapshot_download(
            source, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "pytorch_model.bin"]))
    except Exception as e:  # offline, unknown id, auth: one line, whatever the cause
        raise UserError(f"--hf {source}: not a local directory and the hub could not provide it "
                        f"({type(e).__name__}); give a local model directory") from None


def load_state_dict(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of a HF checkpoint as numpy: model.safetensors, a sharded safetensors
    index, or pytorch_model.bin (weights only)."""
    single, index, binary = (directory / "model.safetensors", directory / "model.safetensors.index.json",
                             directory / "pytorch_model.bin")
    if single.is_file():
        files = [single]
    elif index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [directory / s for s in shards]
    elif binary.is_file():
        return _load_bin(binary)
    else:
        raise UserError(f"{directory}: no weights (model.safetensors, model.safetensors.index.json "
                        f"or pytorch_model.bin)")
    tensors = {}
    for file in files:
        try:
            with safetensors.safe_open(str(file), framework="numpy") as f:
                tensors.update({name: f.get_tensor(name) for name in f.keys()})
        except Exception as e:  # truncated or corrupt files raise several error types
            raise UserError(f"{file}: cannot read the safetensors file ({e})") from None
    return tensors


def _load_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise UserError(f"{path}: reading .bin weights needs PyTorch (pip install 'flax_lm[torch]')") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: cannot read the checkpoint ({e})") from None
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}


def load_tokenizer(directory: Path) -> Tokenizer:
    """The directory's tokenizer.json, or its vocab.json/merges.txt (or other slow
    tokenizer files) converted through transformers."""
    if (directory / "tokenizer.json").is_file():
        return tokenizer_lib.load(directory / "tokenizer.json")
    try:
        import transformers
        return transformers.AutoTokenizer.from_pretrained(str(directory)).backend_tokenizer
    except Exception as e:
        raise UserError(f"{directory}: no tokenizer.json, and transformers cannot convert its tokenizer "
                        f"({type(e).__name__})") from None
