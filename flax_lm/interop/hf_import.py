"""`flax-lm import`: a Hugging Face model directory (or hub id) as a flax_lm workdir.

The workdir gets the mapped config, the tokenizer and a step-0 checkpoint holding the
imported parameters and a fresh optimizer state, so `generate`, `evaluate`, `export`
and `train` (fine-tuning) all work on it.
"""

import json
from pathlib import Path

from flax_lm import config as config_lib
from flax_lm import defaults, state_init
from flax_lm import workdir as workdir_lib
from flax_lm.errors import UserError
from flax_lm.interop import families
from flax_lm.interop.hf_files import load_state_dict, load_tokenizer, resolve_source
from flax_lm.run import setup


def import_hf(source: str, workdir: str | Path) -> Path:
    """Creates `workdir` from the HF model `source`; returns the workdir."""
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
    load_tokenizer(directory).save(str(workdir / workdir_lib.TOKENIZER))
    run = setup(cfg, workdir, with_data=False)
    params = module.params_from_hf(state_dict, run.model.cfg)
    state = state_init.state_from_params(params, run.tx, run.abstract_state, run.shardings, cfg.train.seed)
    workdir_lib.save_config(workdir, cfg)
    run.checkpointer.save(0, state, {}, force=True)
    run.checkpointer.wait()
    run.checkpointer.close()
    return workdir


