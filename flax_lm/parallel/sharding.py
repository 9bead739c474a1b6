"""Logical axis names -> mesh axes: the one table that decides the parallelism.

Models name axes logically ("embed", "heads", ...). Parameters use the parameter
names, activations the `act_*` names, so that the batch and the parameters' embed
dimension may both use the `fsdp` mesh axis without colliding.
"""

import contextlib

import flax.linen as nn
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from flax_lm.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES = (
    # activations
    ("batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", None),  # the output side of a D x D layer (pooler, MLM transform)
    ("heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("positions", None),
    ("relpos_buckets", None),  # T5's relative-position bias table (buckets x heads)
    ("qkv", None),
    ("layers", None),
)


def logical_sharding(tree, mesh: jax.sharding.Mesh):
    """Maps a pytree of logical PartitionSpecs (or boxed abstract params) to NamedShardings."""
    specs = nn.get_partition_spec(tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def param_names(path) -> tuple[str, ...]:
    """The dictionary keys of a parameter tree path (a boxed leaf's path ends past them, in .value)."""
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def unbox_reshaped(opt_state, params):
    """`opt_state` with the boxes taken off the statistics that are not shaped as their parameter
    (the one at the same dictionary path): Adafactor's factored row and column moments, and its
    placeholders, keep their parameter's box, whose sharding does not fit them; unboxed, they
    are replicated. Statistics shaped as their parameter (Adam's moments) keep its sharding."""
    def boxed(x):
        return isinstance(x, nn.Partitioned)
    shapes = {param_names(path): x.value.shape for path, x in jax.tree_util.tree_leaves_with_path(params, is_leaf=boxed)
              if boxed(x)}

    def fitting(path, x):
        return x.value if boxed(x) and x.value.shape != shapes.get(param_names(path)) else x
    return jax.tree_util.tree_map_with_path(fitting, opt_state, is_leaf=boxed)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of a batch array whose leading dimension is the global batch."""
    mesh_axes = nn.logical_to_mesh_axes(("batch",), LOGICAL_AXIS_RULES)
    return NamedSharding(mesh, PartitionSpec(*mesh_axes))


def process_batch_to_global(host_batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """This process's rows of a global batch (arrays leading with B / processes) -> global arrays
    (leading with B) split over the batch axes of `mesh`."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in host_batch.items()}


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh):
    """Makes `mesh` and the logical-axis rules ambient, for tracing and running steps.

    Every step runs under this, so a mesh a caller passes is checked here. Only meshes whose axes
    are all AxisType.Auto are taken (flax_lm.parallel.mesh.make_mesh makes those): the models place
    activations with `nn.with_logical_constraint` and leave the rest to the compiler, which an
    explicit-sharding mesh (AxisType.Explicit, `jax.make_mesh`'s default) does not allow, so one
    is refused with a UserError that says how to make an Auto one."""
    explicit = [name for name, kind in zip(mesh.axis_names, mesh.axis_types) if kind != AxisType.Auto]
    if explicit:
        raise UserError(f"mesh axes {explicit} are not AxisType.Auto: flax_lm shards by logical-axis rules on an "
                        f"Auto mesh; make it with flax_lm.parallel.mesh.make_mesh, or jax.make_mesh(..., "
                        f"axis_types=(jax.sharding.AxisType.Auto,) * {len(mesh.axis_names)})")
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        yield
