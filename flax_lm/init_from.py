"""`train.init_from`: the initial weights (and tokenizer) of a new run.

A source is a flax_lm workdir (its latest checkpoint) or a Hugging Face model directory
or hub id. Either way the weights pass through the family's Hugging Face mapping, which
checks every tensor's shape against the run's model and converts between scanned and
unscanned layer layouts.
"""

from pathlib import Path

import jax
import numpy as np

from flax_lm import workdir as workdir_lib
from flax_lm.errors import UserError
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.interop import families, hf_files


def is_workdir(source: str) -> bool:
    path = Path(source)
    return (path / workdir_lib.CONFIG).is_file() and (path / workdir_lib.CHECKPOINTS).is_dir()


def load_params(source: str, model_cfg, family: str) -> dict:
    """Host (numpy) parameters of `source` in the layout of `model_cfg`."""
    _, module = families.for_family(family)
    if is_workdir(source):
        from flax_lm.run import load_run  # run.py imports this module
        run, state = load_run(source)
        run.checkpointer.close()
        if run.cfg.model.family != family:
            raise UserError(f"train.init_from: {source} holds a {run.cfg.model.family} model, not {family}")
        state_dict = module.params_to_hf(jax.tree.map(np.asarray, jax.device_get(state.params)), run.model.cfg)
    else:
        state_dict = hf_files.load_state_dict(hf_files.resolve_source(source))
    try:
        return module.params_from_hf(state_dict, model_cfg)
    except UserError as e:
        raise UserError(f"train.init_from {source}: {e}; does the model config match it?") from None


def tokenizer(source: str):
    """The source's tokenizer: a workdir's tokenizer.json, or an HF directory's (converted
    through transformers when it has only vocab/merges files)."""
    if is_workdir(source):
        return tokenizer_lib.load(Path(source) / workdir_lib.TOKENIZER)
    return hf_files.load_tokenizer(hf_files.resolve_source(source))
