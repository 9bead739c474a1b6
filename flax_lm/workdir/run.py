"""A run: everything built from a config and a workdir, shared by train, evaluate,
generate, export and import. `restore_or_init` gives its train state."""

import dataclasses
from pathlib import Path

import jax

from flax_lm.workdir import best, checkpointing, init_from
from flax_lm.training import state_init
from flax_lm.training.build import build
from flax_lm.parallel import sharding
from flax_lm.config import training_length
from flax_lm.config.resolve import resolve, with_label_count
from flax_lm.parallel import mesh as mesh_lib
from flax_lm.workdir import layout as workdir_lib
from flax_lm.data import pipeline, unigram
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.errors import UserError
from flax_lm.generation import for_model, generate, settings
from flax_lm.models import elmo, head_name


@dataclasses.dataclass
class Run:
    """Everything built from a config and a workdir, shared by train, evaluate and generate."""

    cfg: object
    workdir: Path
    mesh: jax.sharding.Mesh
    model: object
    tokenizer: object
    splits: dict  # split name -> Dataset (flax_lm.data.dataset); empty when set up without data
    label_names: list[str] | None  # of classification and NER runs
    tx: object
    schedule: object
    abstract_state: object
    shardings: object
    checkpointer: checkpointing.Checkpointer
    steps: int  # optimizer steps of the run (flax_lm.config.training_length); 0 for train.epochs without its train split
    task: object  # flax_lm.tasks.Task
    train_steps: object  # the train step of parallel.strategy (flax_lm.training.strategy), not compiled yet

    def whole_to_global(self, whole_batch: dict) -> dict:
        """A whole batch that every process holds (e.g. evaluation's) -> global arrays sharded over
        the batch axes; each process places only the rows its own devices hold."""
        batch_sharding = sharding.batch_sharding(self.mesh)
        return {k: jax.make_array_from_callback(v.shape, batch_sharding, lambda index, v=v: v[index])
                for k, v in whole_batch.items()}


def setup(cfg, workdir: Path, splits: tuple[str, ...] = pipeline.SPLITS) -> Run:
    """Builds the mesh, data, model, optimizer and checkpointer for a run (no state yet),
    with the datasets of `splits` (those the config has). `Run.cfg` is `cfg` resolved
    (`flax_lm.config.resolve`) and locked; `cfg` itself is left as it is.

    With no splits, the tokenizer and label names come from the workdir and no data is read.
    A classification run's `model.num_labels` is the count of its data's labels when it is 0.
    """
    workdir = workdir_lib.local(workdir)
    cfg = resolve(cfg, architecture=_architecture(cfg, workdir))   # the data are read with the run's shape
    mesh = mesh_lib.make_mesh(cfg)
    is_primary = jax.process_index() == 0
    if is_primary:
        workdir.mkdir(parents=True, exist_ok=True)
    prepared = (pipeline.prepare(cfg, workdir, is_primary, splits, init_from.tokenizer) if splits
                else pipeline.load_saved(cfg, workdir))
    if prepared.label_names is not None:   # known only now that the data are read; nothing derived reads it
        cfg = with_label_count(cfg, len(prepared.label_names))
    train_split = prepared.splits.get("train")
    steps = training_length.total_steps(cfg.train, cfg.optim.warmup_steps,
                                        None if train_split is None else len(train_split))
    vocab = elmo.vocabulary(prepared.tokenizer) if cfg.model.family == "elmo" else ()
    built = build(cfg, mesh, steps, prepared.label_names, vocab)
    checkpointer = checkpointing.Checkpointer(
        workdir / workdir_lib.CHECKPOINTS, save_every=cfg.train.checkpoint_every,
        keep=cfg.train.keep_checkpoints, async_writes=cfg.train.async_checkpointing)
    return Run(cfg, workdir, mesh, built.model, prepared.tokenizer, prepared.splits, prepared.label_names, built.tx,
               built.schedule, built.abstract_state, built.shardings, checkpointer, steps, built.task,
               built.train_steps)


def _architecture(cfg, workdir: Path) -> dict | None:
    """The `model` values a run from `train.init_from` takes: those its workdir's config saved when
    it has one (the run began already), else the source's; None without train.init_from."""
    if not cfg.train.init_from:
        return None
    if (workdir / workdir_lib.CONFIG).is_file():
        saved = workdir_lib.load_config(workdir).model
        return {k: saved[k] for k in init_from.ARCHITECTURE_KEYS}
    return init_from.architecture(cfg.train.init_from)


def restore_or_init(run: Run, step: int | None = None, warn=print):
    """(state, data_state or None): the checkpoint at `step` (default: the newest that can be
    read; damaged newer ones are reported through `warn` and set aside); else the weights of
    `train.init_from` with a fresh optimizer; else a freshly initialised state."""
    target = checkpointing.abstract_with_shardings(run.abstract_state, run.shardings)
    if step is None:
        newest = run.checkpointer.restore_newest_readable(target, warn)
        if newest is not None:
            return newest
    if step is None and run.cfg.train.init_from:
        fresh = state_init.host_params(run.model, run.cfg.train.seed, run.cfg.model.max_len)
        params = init_from.load_params(run.cfg.train.init_from, run.model.cfg, run.cfg.model.family,
                                       head_name(run.cfg), fresh, _source_run)
        return state_init.state_from_params(params, run.tx, run.abstract_state, run.shardings,
                                            run.cfg.train.seed, fresh), None
    if step is None:
        state = state_init.create_state(run.model, run.tx, run.mesh, run.cfg.train.seed, run.cfg.model.max_len,
                                        run.shardings)
        return state, None
    return run.checkpointer.restore(step, target)


def _source_run(workdir: str):
    """(config, model, TrainState) of a workdir that a new run starts from (`train.init_from`)."""
    source, state = load_run(workdir)
    source.checkpointer.close()
    return source.cfg, source.model, state


def load_run(workdir: str | Path, step: int | None = None, splits: tuple[str, ...] = ()):
    """(Run with the datasets of `splits`, TrainState) of an existing workdir at checkpoint `step`;
    by default the best checkpoint when the run kept one (`train.best_metric`), else the latest."""
    cfg = workdir_lib.load_config(workdir)
    run = setup(cfg, workdir, splits)
    if step is None:
        state = best.restore(workdir, checkpointing.abstract_with_shardings(run.abstract_state, run.shardings))
        if state is not None:
            return run, state
    steps = run.checkpointer.all_steps()
    if not steps:
        raise UserError(f"--workdir {workdir}: no checkpoint there yet")
    if step is not None and step not in steps:
        raise UserError(f"--step {step}: no such checkpoint (have {', '.join(map(str, sorted(steps)))})")
    state, _ = restore_or_init(run, step)
    return run, state


GENERATIVE_TASKS = ("causal_lm", "seq2seq", "span_corruption")  # their models end in a vocabulary head


def refuse_unless_generative(cfg) -> None:
    """A UserError unless the run's task makes text (`generate_texts` can decode from it)."""
    if cfg.model.family == "elmo":
        raise UserError("this run is an ELMo bidirectional LM, which does not generate text; use it as features "
                        "for NER or classification with train.init_from")
    if cfg.task not in GENERATIVE_TASKS:
        label = " (label text with flax-lm predict)" if cfg.task in pipeline.FINE_TUNING_TASKS else ""
        raise UserError(f"this run's task is {cfg.task!r}, which does not generate text; flax-lm generate continues "
                        f"{', '.join(GENERATIVE_TASKS)} runs{label}")


def generate_texts(run: Run, params, prompts: list[str], streamer=None, **overrides) -> list[str]:
    """`sample.num_return_sequences` texts per prompt, with the run's `sample` settings or
    `overrides` of them; generation stops at the end token. A decoder-only model gives each
    prompt followed by its continuation; an empty prompt starts from the end-of-text token, as a
    new text does in GPT-2's training data. An encoder-decoder gives the output text alone, for
    the prompt put after `data.source_prefix`. `streamer(tokens_B)` sees each step's new tokens
    on the host."""
    if run.cfg.model.family == "t5":
        ids = [_fitted(run.cfg, run.tokenizer.encode(run.cfg.data.source_prefix + p).ids) for p in prompts]
        return [run.tokenizer.decode(new) for new in generate_ids(run, params, ids, streamer, **overrides)]
    eos = tokenizer_lib.eos_id(run.tokenizer)
    ids = [run.tokenizer.encode(p).ids or [eos] for p in prompts]
    out = generate_ids(run, params, ids, streamer, **overrides)
    copies = len(out) // len(prompts)
    return [run.tokenizer.decode(ids[i // copies] + new) for i, new in enumerate(out)]


def _fitted(cfg, ids: list[int]) -> list[int]:
    """An encoder input cut to data.seq_len, its end token kept, as the training data was
    (data.too_long=truncate); with data.too_long=refuse one too long is a UserError."""
    limit = pipeline.seq_len(cfg)
    if len(ids) <= limit:
        return ids
    if cfg.data.too_long == "refuse":
        raise UserError(f"an input has {len(ids)} tokens, more than data.seq_len ({limit}); shorten it or set "
                        f"data.too_long=truncate")
    return ids[:limit - 1] + ids[-1:]


def generate_ids(run: Run, params, ids: list[list[int]], streamer=None, **overrides) -> list[list[int]]:
    """The new token ids for each prompt of token `ids` (see `generate_texts`)."""
    eos, pad = special_ids(run.cfg, run.tokenizer)
    config = settings.from_sample_section({**run.cfg.sample.to_dict(), **overrides}, eos, run.cfg.train.seed, pad)
    with sharding.activate(run.mesh):
        return generate(for_model(run.model), params, ids, config, streamer)


def decoding_weights(run: Run, params):
    """`params` prepared once for decoding, to pass to many `generate_ids` calls in their place
    (see `CausalDecoder.prepared`)."""
    with sharding.activate(run.mesh):
        return for_model(run.model).prepared(params)


def special_ids(cfg, tokenizer) -> tuple[int, int]:
    """(end token, padding token) of a generative run's tokenizer; GPT-2 pads with its end token."""
    if cfg.model.family == "t5":
        pad, eos, _ = unigram.special_ids(tokenizer)
        return eos, pad
    eos = tokenizer_lib.eos_id(tokenizer)
    return eos, eos


def sample_text(run: Run, params, prompt: str, **overrides) -> str:
    """One continuation of `prompt` (see `generate_texts`)."""
    return generate_texts(run, params, [prompt], num_return_sequences=1, **overrides)[0]
