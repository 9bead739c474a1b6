"""`flax-lm import`: a Hugging Face model directory (or hub id) as a flax_lm workdir.

The workdir gets the mapped config, the tokenizer and a step-0 checkpoint holding the
imported parameters and a fresh optimizer state, so `generate`, `evaluate`, `export`
and `train` (fine-tuning) all work on it.
"""

import json
from pathlib import Path

from flax_lm.config import load as config_lib
from flax_lm.config import defaults
from flax_lm.training import state_init
from flax_lm.workdir import layout as workdir_lib
from flax_lm.data import pipeline
from flax_lm.errors import UserError
from flax_lm.interop import families, peft_adapter
from flax_lm.interop.hf_files import (SENTENCE_PIPELINE, load_state_dict, load_tokenizer, resolve_source,
                                      sentence_pipeline)
from flax_lm.models import head_name, lora, task_of_head
from flax_lm.workdir.run import setup


def import_hf(source: str, workdir: str | Path, task: str | None = None, peft: str | Path | None = None) -> Path:
    """Creates `workdir` from the HF model `source`; returns the workdir. A model with a head has
    its task. A base model (BertModel, GPT2Model, LlamaModel) is imported as itself, task
    `embedding`, unless `task` puts a head on it (a fresh one: e.g. classification); a
    sentence-transformers directory's pooling and normalisation are kept for `flax-lm embed`.
    `peft`, a PEFT LoRA adapter directory of that base model, makes it a LoRA run (peft.* from
    its adapter_config.json) holding the adapter's weights, and its task heads (modules_to_save)."""
    directory = resolve_source(source)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise UserError(f"{directory}: no config.json")
    hf_config = json.loads(config_file.read_text())
    arch, module, head = families.for_hf_config(hf_config)
    cfg = defaults.get_config()
    cfg.model.update(module.config_from_hf(hf_config))
    cfg.task = _task_for(head, task, arch)
    if head == "" and cfg.model.family in families.BASE_DECODERS.values():  # its LM head is its embedding
        cfg.model.tie_word_embeddings = True
    if head == "pretraining":
        cfg.data.nsp = True
    adapter = peft_adapter.read_adapter(peft) if peft is not None else None
    if adapter is not None:
        cfg.peft.update(method="lora", rank=adapter.rank, alpha=adapter.alpha, dropout=adapter.dropout,
                        targets=",".join(adapter.targets()))
    config_lib.validate(cfg)
    state_dict = load_state_dict(directory)
    if adapter is not None:
        state_dict = _with_heads(state_dict, adapter.heads, peft, fresh_head=head != head_name(cfg))

    workdir = Path(workdir)
    if (workdir / workdir_lib.CHECKPOINTS).exists():
        raise UserError(f"--workdir {workdir} already holds checkpoints; import into a new directory")
    workdir.mkdir(parents=True, exist_ok=True)
    load_tokenizer(directory).save(str(workdir / workdir_lib.TOKENIZER))
    _save_label_names(hf_config, cfg, workdir)
    pipeline_settings = sentence_pipeline(directory) if cfg.task == "embedding" else None
    if pipeline_settings is not None:
        (workdir / SENTENCE_PIPELINE).write_text(json.dumps(pipeline_settings) + "\n", encoding="utf-8")
    run = setup(cfg, workdir, splits=())
    fresh = None
    if head != head_name(cfg) or adapter is not None:  # a fresh head under a bare encoder; the adapters' layout
        fresh = state_init.host_params(run.model, cfg.train.seed, cfg.model.max_len)
    params = module.params_from_hf(state_dict, run.model.cfg, head_name(cfg), fresh)
    if adapter is not None:
        params = lora.combine(params, peft_adapter.adapter_params(fresh, run.model.cfg, head_name(cfg), run.model.lora,
                                                                  module.params_to_hf, adapter))
    state = state_init.state_from_params(params, run.tx, run.abstract_state, run.shardings, cfg.train.seed)
    workdir_lib.save_config(workdir, run.cfg)   # resolved: the label count of the saved label map
    run.checkpointer.save(0, state, {}, force=True)
    run.checkpointer.wait()
    run.checkpointer.close()
    return workdir


def _with_heads(state_dict: dict, heads: dict, peft, fresh_head: bool) -> dict:
    """The base model's tensors with the adapter's task heads (PEFT's modules_to_save) in place of
    the base model's own, which must be there with the same shapes (unless `fresh_head`: a base
    encoder imported with --task, whose head the adapter then supplies)."""
    for key, tensor in heads.items():
        if key not in state_dict and fresh_head:
            continue
        if key not in state_dict:
            raise UserError(f"--peft {peft}: its {key} (modules_to_save) is not a tensor of the base model; import "
                            f"the base model with that head (e.g. --task classification on a base encoder)")
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise UserError(f"--peft {peft}: its {key} has shape {tuple(tensor.shape)}, the base model's "
                            f"{tuple(state_dict[key].shape)}")
    return {**state_dict, **heads}


def _task_for(head: str, task: str | None, arch: str) -> str:
    if head:
        if task and task != task_of_head(head):
            raise UserError(f"--task {task}: {arch} is a {task_of_head(head)} model")
        return task_of_head(head)
    return task or "embedding"


def _save_label_names(hf_config: dict, cfg, workdir: Path) -> None:
    """A classifier's id2label as the run's label map (names "LABEL_i" when the config has none)."""
    if cfg.task not in ("classification", "token_classification"):
        return
    n = cfg.model.num_labels
    id2label = {int(k): v for k, v in (hf_config.get("id2label") or {}).items()}
    names = [id2label.get(i, f"LABEL_{i}") for i in range(n)] if n > 1 or cfg.task != "classification" else ["score"]
    pipeline.save_label_names(cfg, workdir, names)
