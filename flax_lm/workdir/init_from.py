"""`train.init_from`: the architecture, initial weights and tokenizer of a new run.

A source is a flax_lm workdir (its latest checkpoint) or a Hugging Face model directory
or hub id. Either way the weights pass through the family's Hugging Face mapping, which
checks every tensor's shape against the run's model and converts between scanned and
unscanned layer layouts. Tensors of a head the source lacks (a classifier on top of a
pre-trained encoder) keep their fresh initialisation.
"""

import json
from pathlib import Path

import jax
import numpy as np

from flax_lm.config import defaults
from flax_lm.workdir import layout as workdir_lib
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.errors import UserError
from flax_lm.interop import families, hf_files
from flax_lm.models import elmo, head_name, lora

# The model keys that make the architecture (declared `architecture=True` in the schema): a run
# starting from a source takes them from it.
ARCHITECTURE_KEYS = defaults.schema().architecture_keys()


def is_workdir(source: str) -> bool:
    path = Path(source)
    return (path / workdir_lib.CONFIG).is_file() and (path / workdir_lib.CHECKPOINTS).is_dir()


def architecture(source: str) -> dict:
    """The source's model architecture as flax_lm `model` config values."""
    if is_workdir(source):
        model = workdir_lib.load_config(source).model
        return {k: model[k] for k in ARCHITECTURE_KEYS}
    directory = hf_files.resolve_source(source)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise UserError(f"train.init_from {source}: no config.json there")
    hf_config = json.loads(config_file.read_text())
    _, module, _ = families.for_hf_config(hf_config)
    values = module.config_from_hf(hf_config)
    return {k: values[k] for k in ARCHITECTURE_KEYS if k in values}


def load_params(source: str, model_cfg, family: str, head: str, fresh: dict, load_workdir) -> dict:
    """Host (numpy) parameters of `source` in the layout of `model_cfg` with `head`; tensors the
    source does not have for this head come from `fresh` (host parameters of the same model).
    `load_workdir(source)` gives (run config, model, TrainState) of a workdir source: the run
    layer's `load_run`, which this lower layer does not import."""
    if family == "elmo":
        return _elmo_params(source, fresh, load_workdir)
    module = families.module_for(family)
    carried = {}
    if is_workdir(source):
        cfg, model, state = load_workdir(source)
        if cfg.model.family != family:
            raise UserError(f"train.init_from: {source} holds a {cfg.model.family} model, not {family}")
        source_params = jax.tree.map(np.asarray, jax.device_get(state.params))
        adapters = lora.split(source_params)[1]
        carried = _same_adapters(adapters, lora.split(fresh)[1])
        if adapters and not carried:  # a LoRA source's weights are its merged ones
            source_params = jax.tree.map(np.asarray, lora.merge(source_params, model.lora))
        state_dict = module.params_to_hf(source_params, model.cfg, head_name(cfg))
    else:
        state_dict = hf_files.load_state_dict(hf_files.resolve_source(source))
    try:
        params = module.params_from_hf(state_dict, model_cfg, head, fresh)
    except UserError as e:
        raise UserError(f"train.init_from {source}: {e}; does the model config match it?") from None
    return lora.combine(params, carried) if carried else params


def _same_adapters(source: dict, fresh: dict) -> dict:
    """A LoRA source's adapters when the new run's model has the same ones (paths and shapes): a
    LoRA run started from a LoRA workdir trains its adapters on. Else {}: the new run starts from
    the source's merged weights (with fresh adapters if it is a LoRA run)."""
    same = source and jax.tree.structure(source) == jax.tree.structure(fresh) and all(
        a.shape == b.shape for a, b in zip(jax.tree.leaves(source), jax.tree.leaves(fresh)))
    return source if same else {}


def _elmo_params(source: str, fresh: dict, load_workdir) -> dict:
    """ELMo has no Hugging Face class: its body comes from a flax_lm ELMo workdir, tensor for tensor."""
    if not is_workdir(source):
        raise UserError(f"train.init_from {source}: an ELMo model starts from a flax_lm ELMo workdir")
    cfg, _, state = load_workdir(source)
    if cfg.model.family != "elmo":
        raise UserError(f"train.init_from: {source} holds a {cfg.model.family} model, not elmo")
    try:
        return elmo.params_from_pretrained(jax.tree.map(np.asarray, jax.device_get(state.params)), fresh)
    except ValueError as e:
        raise UserError(f"train.init_from {source}: {e}; does the model config match it?") from None


def tokenizer(source: str):
    """The source's tokenizer: a workdir's tokenizer.json, or an HF directory's (converted
    through transformers when it has only vocab/merges files)."""
    if is_workdir(source):
        return tokenizer_lib.load(Path(source) / workdir_lib.TOKENIZER)
    return hf_files.load_tokenizer(hf_files.resolve_source(source))
