"""The one build of a run's model, optimizer, train-state layout and train step from its config,
shared by `train` (through `flax_lm.workdir.run.setup`, on this machine's devices) and `compile`
(on a TPU topology's devices): nothing is allocated, so either can build for any mesh."""

import dataclasses
import functools

import jax
import ml_collections
import optax

from flax_lm.models import build_model, elmo, head_name, lora
from flax_lm.tasks import Task, get_task
from flax_lm.training import optim, state_init
from flax_lm.training.strategy import JitSteps, PmapSteps, make_steps


@dataclasses.dataclass
class Built:
    mesh: jax.sharding.Mesh
    model: object
    task: Task
    tx: object              # the optax optimizer
    schedule: object        # step -> learning rate
    abstract_state: object  # the TrainState's shapes and dtypes (jax.ShapeDtypeStruct leaves)
    shardings: object       # the TrainState's NamedShardings on `mesh`
    train_steps: JitSteps | PmapSteps  # the step of `parallel.strategy`, jitted but not yet compiled


def build(cfg, mesh: jax.sharding.Mesh, steps: int, label_names: list[str] | None = None,
          vocab: tuple = ()) -> Built:
    """Everything a run's train step needs, for `mesh` (`flax_lm.parallel.mesh.make_mesh` of the
    devices to run or compile on) and `steps` optimizer steps (the schedule's length).
    `label_names` are those of a classification run's data (None: none read); `vocab` the
    tokenizer's token strings by id, which ELMo spells its tokens from. `cfg` is resolved
    (`flax_lm.config.resolve`): what the run saves is what it builds."""
    if not isinstance(cfg, ml_collections.FrozenConfigDict):
        raise TypeError("build takes a config resolved by flax_lm.config.resolve.resolve")
    model = build_model(cfg.model, head_name(cfg), vocab)
    schedule = optim.learning_rate_schedule(cfg.optim, steps)
    tx = optim.make_optimizer(cfg.optim, steps, cfg.model.n_layers)
    if cfg.model.family == "elmo" and cfg.model.elmo_frozen and head_name(cfg) != "bidirectional_lm":
        tx = optax.chain(tx, optim.zero_updates_except(functools.partial(elmo.trainable_mask, frozen=True)))
    if cfg.peft.method == "lora":  # adapters in the model; the frozen base holds no optimizer state
        model = lora.adapted(model, lora.settings_from_config(cfg))
        tx = optim.freeze_except(tx, lora.trainable_mask)
    abstract_state, shardings = state_init.state_shardings(model, tx, mesh, cfg.train.seed, cfg.model.max_len)
    task = get_task(cfg, label_names)
    train_steps = make_steps(cfg, model, task, tx, schedule, mesh, shardings)
    return Built(mesh, model, task, tx, schedule, abstract_state, shardings, train_steps)
