"""`flax-lm import`: a Hugging Face model directory (or hub id) as a flax_lm workdir.

The workdir gets the mapped config, the tokenizer and a step-0 checkpoint holding the
imported parameters and a fresh optimizer state, so `generate`, `evaluate`, `export`
and `train` (fine-tuning) all work on it. `.bin` weights load only with
`torch.load(weights_only=True)`; safetensors are preferred whenever both exist.
"""

import json
from pathlib import Path

import numpy as np
import safetensors

from flax_lm import config as config_lib
from flax_lm import defaults, state_init
from flax_lm import workdir as workdir_lib
from flax_lm.errors import UserError
from flax_lm.interop import families


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


def _import_tokenizer(directory: Path, workdir: Path) -> None:
    target = workdir / workdir_lib.TOKENIZER
    if (directory / "tokenizer.json").is_file():
        target.write_bytes((directory / "tokenizer.json").read_bytes())
        return
    try:
        import transformers
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:
        raise UserError(f"{directory}: no tokenizer.json, and transformers cannot convert its tokenizer "
                        f"({type(e).__name__})") from None
    tokenizer.backend_tokenizer.save(str(target))


def import_hf(source: str, workdir: str | Path) -> Path:
    """Creates `workdir` from the HF model `source`; returns the workdir."""
    from flax_lm.run import setup  # run.py imports this module (through init_from)
    directory = resolve_source(source)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise UserError(f"{directory}: no config.json")
    hf_config = json.loads(config_file.read_text())
    _, module = families.for_hf_config(hf_config)
    cfg = defaults.get_config()
    cfg.model.update(module.config_from_hf(hf_config))
    config_lib.validate(cfg)
    state_dict = load_state_dict(directory)

    workdir = Path(workdir)
    if (workdir / workdir_lib.CHECKPOINTS).exists():
        raise UserError(f"--workdir {workdir} already holds checkpoints; import into a new directory")
    workdir.mkdir(parents=True, exist_ok=True)
    _import_tokenizer(directory, workdir)
    run = setup(cfg, workdir, with_data=False)
    params = module.params_from_hf(state_dict, run.model.cfg)
    state = state_init.state_from_params(params, run.tx, run.abstract_state, run.shardings, cfg.train.seed)
    workdir_lib.save_config(workdir, cfg)
    run.checkpointer.save(0, state, {}, force=True)
    run.checkpointer.wait()
    run.checkpointer.close()
    return workdir


