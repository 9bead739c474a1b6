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


# A workdir's sentence-transformers pipeline (pooling, normalisation, truncation), from an imported
# model directory's modules.json; `flax-lm embed` defaults to it and `export` writes it back.
SENTENCE_PIPELINE = "sentence_pipeline.json"


def sentence_pipeline(directory: Path) -> dict | None:
    """{"pooling": "mean" | "cls" | "last", "normalize": bool, "max_seq_length": int or None} of a
    sentence-transformers model directory (Transformer, Pooling and optionally Normalize modules),
    None when it is not one. A pooling flax_lm does not compute (max, sqrt-length) is a UserError."""
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text())
        kinds = {m["type"].rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{modules_file}: not a sentence-transformers modules list ({e})") from None
    pooling = "mean"  # sentence-transformers' default when the Pooling module has no settings
    if "Pooling" in kinds and (directory / kinds["Pooling"] / "config.json").is_file():
        settings = json.loads((directory / kinds["Pooling"] / "config.json").read_text())
        chosen = [k for k, v in settings.items() if k.startswith("pooling_mode_") and v is True]
        known = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "last"}
        if len(chosen) != 1 or chosen[0] not in known:
            raise UserError(f"{directory / kinds['Pooling']}: pooling {', '.join(chosen) or 'none'} is not supported "
                            f"(flax-lm embed pools by mean, cls or last alone)")
        pooling = known[chosen[0]]
    max_seq_length = None
    if (directory / "sentence_bert_config.json").is_file():
        max_seq_length = json.loads((directory / "sentence_bert_config.json").read_text()).get("max_seq_length")
    return {"pooling": pooling, "normalize": "Normalize" in kinds, "max_seq_length": max_seq_length}


def write_sentence_pipeline(out: Path, pipeline: dict, dimension: int) -> None:
    """The sentence-transformers files of `pipeline` (see `sentence_pipeline`) in model directory
    `out`, so that `SentenceTransformer(out)` embeds as the workdir does."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if pipeline["normalize"]:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (out / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": dimension, "pooling_mode_cls_token": pipeline["pooling"] == "cls",
               "pooling_mode_mean_tokens": pipeline["pooling"] == "mean", "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False,
               "pooling_mode_lasttoken": pipeline["pooling"] == "last"}
    files = {"modules.json": modules, "1_Pooling/config.json": pooling}
    if pipeline.get("max_seq_length"):
        files["sentence_bert_config.json"] = {"max_seq_length": pipeline["max_seq_length"], "do_lower_case": False}
    for name, value in files.items():
        (out / name).write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
