"""`flax-lm export`: a run's checkpoint as a Hugging Face model directory.

The directory loads with `transformers.AutoConfig` / `AutoModelFor...from_pretrained`,
`AutoTokenizer` and `pipeline(...)` with no extra code: config.json, model.safetensors,
tokenizer files and generation_config.json. Parameters are gathered from their shards
into one host copy; the re-layout uses views and converts without copying where the
dtype already matches.
"""

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from flax_lm.workdir import layout as workdir_lib
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.data import unigram, wordpiece
from flax_lm.errors import UserError
from flax_lm.interop import families, hf_files, peft_adapter
from flax_lm.models import DECODERS, head_name, lora
from flax_lm.workdir.run import load_run

DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16}


def export(workdir: str | Path, out_dir: str | Path, step: int | None = None, dtype: str = "float32",
           merge: bool = False) -> Path:
    """Writes the checkpoint at `step` (default: the best, else the latest) of `workdir` to `out_dir`;
    returns it. A LoRA run (peft.method=lora) is written as a PEFT adapter directory, or with
    `merge` as a plain model whose kernels hold W + (alpha / r) * A.B."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    run, state = load_run(workdir, step)
    family, head = run.cfg.model.family, head_name(run.cfg)
    module = families.module_for(family)
    arch = families.architecture(family, run.model.cfg, head)
    model_cfg = run.model.cfg
    host_params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state.params)
    settings = getattr(run.model, "lora", None)
    if settings is not None and not merge:
        out = peft_adapter.write_adapter(out_dir, host_params, model_cfg, head, settings, module.params_to_hf,
                                         base_model=run.cfg.train.init_from or None)
        shutil.copyfile(Path(workdir) / workdir_lib.TOKENIZER, out / "tokenizer.json")
        return out
    if settings is not None:
        host_params = jax.tree.map(np.asarray, lora.merge(host_params, settings))
    elif merge:
        raise UserError(f"--merge: {workdir} is not a LoRA run (peft.method=lora); export it without --merge")
    tensors = module.params_to_hf(host_params, model_cfg, head)
    if family in DECODERS and getattr(model_cfg, "tie_word_embeddings", True):
        tensors.pop("lm_head.weight")  # tied to the input embedding; transformers re-ties it
    if head == "":
        tensors = _base_model_tensors(tensors, family, model_cfg)
    tensors = {k: np.ascontiguousarray(v.astype(DTYPES[dtype], copy=False)) for k, v in tensors.items()}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _as_a_new_file_would_be(out / "model.safetensors")
    hf_config = {"architectures": [arch], "model_type": run.cfg.model.family, **module.config_to_hf(model_cfg),
                 "dtype": dtype}
    shutil.copyfile(Path(workdir) / workdir_lib.TOKENIZER, out / "tokenizer.json")
    if family in DECODERS:  # a byte-level BPE whose end-of-text token also begins and pads
        eos = tokenizer_lib.eos_id(run.tokenizer)
        hf_config.update(bos_token_id=eos, eos_token_id=eos)
        _write_json(out / "generation_config.json", {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos})
        eos_token = run.tokenizer.id_to_token(eos)
        specials = {"bos_token": eos_token, "eos_token": eos_token, "unk_token": eos_token}
    elif family == "t5":
        pad, eos, unk = unigram.special_ids(run.tokenizer)
        ids = {"pad_token_id": pad, "eos_token_id": eos, "decoder_start_token_id": pad}
        hf_config.update(ids)
        _write_json(out / "generation_config.json", ids)
        vocab = run.tokenizer.get_vocab()
        extra = sorted((t for t in vocab if t.startswith("<extra_id_")), key=lambda t: -vocab[t])
        specials = {"eos_token": run.tokenizer.id_to_token(eos), "pad_token": run.tokenizer.id_to_token(pad),
                    "unk_token": run.tokenizer.id_to_token(unk), "additional_special_tokens": extra}
    else:
        if run.label_names and head in ("sequence_classification", "token_classification"):
            hf_config["id2label"] = dict(enumerate(run.label_names))
            hf_config["label2id"] = {name: i for i, name in enumerate(run.label_names)}
        names = wordpiece.special_token_names(run.tokenizer)
        specials = {"pad_token": names.pad, "unk_token": names.unk, "cls_token": names.cls, "sep_token": names.sep,
                    "mask_token": names.mask}
    _write_json(out / "config.json", hf_config)
    _write_json(out / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", **specials,
                                                "model_max_length": run.cfg.model.max_len,
                                                "clean_up_tokenization_spaces": False})
    _write_json(out / "special_tokens_map.json", specials)
    pipeline_file = Path(workdir) / hf_files.SENTENCE_PIPELINE
    if pipeline_file.is_file():
        hf_files.write_sentence_pipeline(out, json.loads(pipeline_file.read_text()), model_cfg.d_model)
    return out


# transformers' base_model_prefix: where a model with a head keeps its base model's tensors
_BASE_PREFIX = {"gpt2": "transformer.", "llama": "model.", "modernbert": "model."}


def _base_model_tensors(tensors: dict, family: str, model_cfg) -> dict:
    """The tensors of a model with a head named as its base model (`BertModel`, `GPT2Model`, ...)
    saves them: without the prefix, and without the head (a decoder's tied lm_head)."""
    prefix = _BASE_PREFIX.get(family) or f"{model_cfg.variant}."
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _as_a_new_file_would_be(path: Path) -> None:
    """Gives `path` the mode `open` gives a new file (0666 less the umask): safetensors writes its
    file 0600, which others who share the directory (a serving user, a colleague) cannot read."""
    umask = os.umask(0)  # the only way to read it is to set it; it is put back at once
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
