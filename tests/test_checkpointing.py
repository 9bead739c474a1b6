"""Checkpoint writes of the train loop: what a save costs the loop's thread."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from flax_lm.workdir.checkpointing import Checkpointer
from flax_lm.training.train_state import TrainState


def test_a_save_in_one_process_copies_replicated_arrays_whole_and_compiles_nothing(tmp_path, caplog):
    """Orbax's replica-parallel saving would slice every replicated array once per device (and
    compile each slice); within one process it shares nothing, so saves take whole arrays."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    params = {"kernel": jax.device_put(jnp.arange(64.0).reshape(16, 4), replicated),
              "bias": jax.device_put(jnp.arange(16, dtype=jnp.int32), replicated),
              "rows": jax.device_put(jnp.ones((8, 3)), split)}
    state = TrainState.fresh(params, {"moment": params["kernel"] * 2}, jax.random.PRNGKey(0))
    checkpointer = Checkpointer(tmp_path, save_every=1, keep=2, async_writes=True)
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        checkpointer.save(1, state, {"position": 3}, force=True)
        checkpointer.wait()
    assert not [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored, data_state = checkpointer.restore(1, abstract)
    checkpointer.close()
    assert data_state == {"position": 3}
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    assert restored.params["rows"].sharding == split
