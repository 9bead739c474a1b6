"""A run: everything built from a config and a workdir, shared by train, evaluate,
generate, export and import. `restore_or_init` gives its train state."""

import dataclasses
from pathlib import Path

import jax

from flax_lm import checkpointing, init_from, mesh as mesh_lib, optim, sharding, state_init
from flax_lm import workdir as workdir_lib
from flax_lm.data import lm_data, pipeline
from flax_lm.data import tokenizer as tokenizer_lib
from flax_lm.errors import UserError
from flax_lm.models import build_model
from flax_lm.sampling import sample


@dataclasses.dataclass
class Run:
    """Everything built from a config and a workdir, shared by train, evaluate and generate."""

    cfg: object
    workdir: Path
    mesh: jax.sharding.Mesh
    model: object
    tokenizer: object
    splits: lm_data.Splits | None  # None when set up without data (generate, export)
    tx: object
    schedule: object
    abstract_state: object
    shardings: object
    checkpointer: checkpointing.Checkpointer

    def to_global(self, host_batch: dict) -> dict:
        """This process's slice of a batch -> global arrays sharded over the batch axes."""
        batch_sharding = sharding.batch_sharding(self.mesh)
        return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in host_batch.items()}


def setup(cfg, workdir: Path, with_data: bool = True) -> Run:
    """Builds the mesh, data, model, optimizer and checkpointer for a run (no state yet).

    Without data, the tokenizer comes from the workdir and the corpus is not read.
    """
    workdir = Path(workdir)
    mesh = mesh_lib.make_mesh(cfg)
    is_primary = jax.process_index() == 0
    if is_primary:
        workdir.mkdir(parents=True, exist_ok=True)
    if with_data:
        tokenizer, splits = pipeline.prepare(cfg, workdir, is_primary)
    else:
        tokenizer, splits = tokenizer_lib.load(workdir / workdir_lib.TOKENIZER), None
    model = build_model(cfg.model)
    schedule = optim.learning_rate_schedule(cfg.optim, cfg.train.steps)
    tx = optim.make_optimizer(cfg.optim, cfg.train.steps)
    abstract_state, shardings = state_init.state_shardings(model, tx, mesh, cfg.train.seed, cfg.model.max_len)
    checkpointer = checkpointing.Checkpointer(
        workdir / workdir_lib.CHECKPOINTS, save_every=cfg.train.checkpoint_every,
        keep=cfg.train.keep_checkpoints, async_writes=cfg.train.async_checkpointing)
    return Run(cfg, workdir, mesh, model, tokenizer, splits, tx, schedule, abstract_state, shardings, checkpointer)


def restore_or_init(run: Run, step: int | None = None):
    """(state, data_state or None): the checkpoint at `step` (default: latest); else the weights of
    `train.init_from` with a fresh optimizer; else a freshly initialised state."""
    step = run.checkpointer.latest_step() if step is None else step
    if step is None and run.cfg.train.init_from:
        params = init_from.load_params(run.cfg.train.init_from, run.model.cfg, run.cfg.model.family)
        return state_init.state_from_params(params, run.tx, run.abstract_state, run.shardings, run.cfg.train.seed), None
    if step is None:
        state = state_init.create_state(run.model, run.tx, run.mesh, run.cfg.train.seed, run.cfg.model.max_len,
                                        run.shardings)
        return state, None
    target = checkpointing.abstract_with_shardings(run.abstract_state, run.shardings)
    return run.checkpointer.restore(step, target)


def load_run(workdir: str | Path, step: int | None = None, with_data: bool = False):
    """(Run, TrainState) of an existing workdir at checkpoint `step` (default: latest)."""
    cfg = workdir_lib.load_config(workdir)
    run = setup(cfg, workdir, with_data=with_data)
    steps = run.checkpointer.all_steps()
    if not steps:
        raise UserError(f"--workdir {workdir}: no checkpoint there yet")
    if step is not None and step not in steps:
        raise UserError(f"--step {step}: no such checkpoint (have {', '.join(map(str, sorted(steps)))})")
    state, _ = restore_or_init(run, step)
    return run, state


def sample_text(run: Run, params, prompt: str, **overrides) -> str:
    """Samples a continuation of `prompt` with the run's `sample` settings (or `overrides`)."""
    s = {**run.cfg.sample.to_dict(), **overrides}
    ids = run.tokenizer.encode(prompt).ids or [tokenizer_lib.eos_id(run.tokenizer)]
    with sharding.activate(run.mesh):
        out = sample(run.model, params, ids, max_new_tokens=s["max_new_tokens"], temperature=s["temperature"],
                     top_k=s["top_k"], seed=run.cfg.train.seed, max_len=run.cfg.model.max_len)
    return run.tokenizer.decode(out)
