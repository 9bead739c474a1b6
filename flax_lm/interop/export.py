"""`flax-lm export`: a run's checkpoint as a Hugging Face model directory.

The directory loads with `transformers.AutoConfig` / `AutoModelFor...from_pretrained`,
`AutoTokenizer` and `pipeline(...)` with no extra code: config.json, model.safetensors,
tokenizer files and generation_config.json. Parameters are gathered from their shards
into one host copy; the re-layout uses views and converts without copying where the
dtype already matches.
"""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from flax_lm import workdir as workdir_lib
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.errors import UserError
from flax_lm.interop import families
from flax_lm.run import load_run

DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16}


def export(workdir: str | Path, out_dir: str | Path, step: int | None = None, dtype: str = "float32") -> Path:
    """Writes the checkpoint at `step` (default: latest) of `workdir` to `out_dir`; returns it."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    run, state = load_run(workdir, step)
    arch, module = families.for_family(run.cfg.model.family)
    model_cfg = run.model.cfg
    host_params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state.params)
    tensors = module.params_to_hf(host_params, model_cfg)
    tensors.pop("lm_head.weight", None)  # tied to the input embedding; transformers re-ties it
    tensors = {k: np.ascontiguousarray(v.astype(DTYPES[dtype], copy=False)) for k, v in tensors.items()}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    eos = tokenizer_lib.eos_id(run.tokenizer)
    hf_config = {"architectures": [arch], "model_type": run.cfg.model.family, **module.config_to_hf(model_cfg),
                 "bos_token_id": eos, "eos_token_id": eos, "dtype": dtype}
    _write_json(out / "config.json", hf_config)
    _write_json(out / "generation_config.json", {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos})
    _write_tokenizer(Path(workdir), out, run.cfg.model.max_len)
    return out


def _write_tokenizer(workdir: Path, out: Path, max_len: int) -> None:
    shutil.copyfile(workdir / workdir_lib.TOKENIZER, out / "tokenizer.json")
    eos = tokenizer_lib.EOS
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eos, "eos_token": eos, "unk_token": eos,
        "model_max_length": max_len, "clean_up_tokenization_spaces": False})
    _write_json(out / "special_tokens_map.json", {"bos_token": eos, "eos_token": eos, "unk_token": eos})


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
