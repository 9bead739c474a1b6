"""LoRA: low-rank adapters beside targeted projections, applied by intercepting them.

A targeted `layers.Projection` with kernel W (*in, *out) gets `lora_a` (*in, r) and `lora_b`
(r, *out) in its own scope, and computes y = x.W + b + (alpha / r) * dropout(x).A.B (PEFT's
LoRA). A target that is one slice of a fused projection (BERT's query inside its (3, N, H) qkv)
gets `lora_a_<name>` / `lora_b_<name>` whose update lands in that slice only, so each of PEFT's
separate layers has its own adapter. The adapters are created by the model's own `init`, with
the logical axes of their layer (`in_axes + (None,)`, `(None,) + out_axes`), so they shard
with it and stack with `scan_layers`. No model code changes: `adapted(model, settings)` is the
same model with its `init`/`apply` run under a Flax method interceptor.

`lora_b` starts at zero, so the initial model equals the base. The base parameters pass through
`stop_gradient` inside `apply`: their gradients are zero and never computed.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_lm.models.layers import Projection, contract

# PEFT's default targets per family, in PEFT's (the HF model's) module names.
DEFAULT_TARGETS = {
    "gpt2": ("c_attn",),
    "llama": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "bert": ("query", "value"),
    "t5": ("q", "v"),
}

# Targets that are one slice of a fused flax_lm projection: name -> (module name, index on its
# first output axis).
FUSED_SLICES = {
    "bert": {"query": ("qkv", 0), "key": ("qkv", 1), "value": ("qkv", 2)},
}

# Modules trained in full beside the adapters (PEFT's modules_to_save for the task heads).
TASK_HEADS = ("classifier", "classifier_dense", "qa_outputs")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """targets: PEFT module names; rank r; alpha (the update is scaled by alpha / r); dropout on
    the adapter input while training (when the apply gets a "dropout" rng)."""
    family: str
    targets: tuple[str, ...]
    rank: int
    alpha: float
    dropout: float = 0.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def sites(self) -> dict[str, list[tuple[str, int | None]]]:
        """flax_lm module name -> [(adapter suffix, slice index or None), ...] of the targets."""
        fused = FUSED_SLICES.get(self.family, {})
        out = {}
        for t in self.targets:
            module, index = fused.get(t, (t, None))
            out.setdefault(module, []).append(("" if index is None else "_" + t, index))
        return out


def default_targets(family: str) -> tuple[str, ...]:
    """The projection names LoRA adapts when `peft.targets` is empty."""
    if family not in DEFAULT_TARGETS:
        raise ValueError(f"peft.targets has no default for model.family={family}; set peft.targets")
    return DEFAULT_TARGETS[family]


def settings_from_config(cfg) -> LoraSettings:
    """The LoRA settings of a run config's `peft` section (its `model.family` for defaults)."""
    targets = tuple(t.strip() for t in cfg.peft.targets.split(",") if t.strip()) or default_targets(cfg.model.family)
    return LoraSettings(cfg.model.family, targets, cfg.peft.rank, float(cfg.peft.alpha), float(cfg.peft.dropout))


def _kaiming_uniform(fan_in: int):
    """PEFT's init of lora_A: kaiming_uniform(a=sqrt(5)) on (r, in), i.e. U(-1/sqrt(in), 1/sqrt(in))."""
    bound = fan_in ** -0.5

    def init(key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def _interceptor(settings: LoraSettings, sites: dict, next_fun, args, kwargs, context):
    module = context.module
    y = next_fun(*args, **kwargs)
    if not (isinstance(module, Projection) and context.method_name == "__call__" and module.name in sites):
        return y
    x = args[0]
    n_in = len(module.in_axes)
    in_shape = tuple(x.shape[-n_in:])
    h = x
    if settings.dropout > 0 and module.has_rng("dropout"):
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - settings.dropout, h.shape)
        h = jnp.where(keep, h / (1.0 - settings.dropout), 0).astype(x.dtype)
    for suffix, index in sites[module.name]:
        out_shape, out_axes = tuple(module.features), tuple(module.out_axes)
        if index is not None:
            out_shape, out_axes = out_shape[1:], out_axes[1:]
        a = module.param("lora_a" + suffix, nn.with_logical_partitioning(
            _kaiming_uniform(math.prod(in_shape)), tuple(module.in_axes) + (None,)),
            in_shape + (settings.rank,), module.param_dtype)
        b = module.param("lora_b" + suffix, nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (None,) + out_axes), (settings.rank,) + out_shape, module.param_dtype)
        low_BxR = contract(h.astype(module.dtype), jnp.asarray(a).astype(module.dtype), None, n_in)
        delta = contract(low_BxR, (settings.scale * jnp.asarray(b)).astype(module.dtype), None, 1)
        if index is None:
            y = y + delta.astype(y.dtype)
        else:
            slot = x.ndim - n_in  # the fused axis of y
            y = y.at[(slice(None),) * slot + (index,)].add(delta.astype(y.dtype))
    return y


def is_adapter(name: str) -> bool:
    return name.startswith("lora_a") or name.startswith("lora_b")


def trainable_mask(params: dict, keep=TASK_HEADS) -> dict:
    """True for adapter leaves and for every leaf under a module named in `keep` (the task head
    stays trainable, as PEFT's modules_to_save)."""
    def walk(tree, inside):
        return {k: (inside or is_adapter(k) or k in keep) if not isinstance(v, dict)
                else walk(v, inside or k in keep) for k, v in tree.items()}
    return walk(params, False)


def freeze_base(params: dict) -> dict:
    """`params` with every frozen (not `trainable_mask`) leaf behind `stop_gradient`."""
    mask = trainable_mask(params)
    return jax.tree.map(lambda t, x: x if t else jax.lax.stop_gradient(x), mask, params)


@functools.cache
def _adapted_class(cls, settings: LoraSettings):
    sites = settings.sites()
    interceptor = functools.partial(_interceptor, settings, sites)

    @nn.nowrap
    def init(self, *args, **kwargs):
        with nn.intercept_methods(interceptor):
            return cls.init(self, *args, **kwargs)

    @nn.nowrap
    def apply(self, variables, *args, **kwargs):
        if "params" in variables and any(is_adapter(k) for k in _leaf_names(variables["params"])):
            variables = {**variables, "params": freeze_base(variables["params"])}
        with nn.intercept_methods(interceptor):
            return cls.apply(self, variables, *args, **kwargs)

    return type(cls.__name__, (cls,), {"init": init, "apply": apply, "lora": settings,
                                       "__module__": cls.__module__, "__qualname__": cls.__qualname__})


def _leaf_names(tree):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaf_names(v)
        else:
            yield k


def adapted(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """`model` (an unbound flax_lm model) with LoRA adapters at `settings.targets`: the same class
    (isinstance holds) whose `init` also creates the adapters and whose `apply` adds their update."""
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.init and f.name not in ("parent", "name")}
    return _adapted_class(type(model), settings)(**fields)


def unadapted(model: nn.Module) -> nn.Module:
    """The plain model of an `adapted` one (the same fields, no adapters); any other model as it is."""
    if getattr(model, "lora", None) is None:
        return model
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.init and f.name not in ("parent", "name")}
    return type(model).__bases__[0](**fields)


def split(params: dict) -> tuple[dict, dict]:
    """(base tree without adapters, the adapter leaves only as a nested dict)."""
    base, adapters = {}, {}
    for k, v in params.items():
        if isinstance(v, dict):
            b, a = split(v)
            base[k] = b
            if a:
                adapters[k] = a
        elif is_adapter(k):
            adapters[k] = v
        else:
            base[k] = v
    return base, adapters


def combine(base: dict, adapters: dict) -> dict:
    """`base` with the leaves of `adapters` (as from `split`) added at their paths."""
    out = dict(base)
    for k, v in adapters.items():
        out[k] = combine(base.get(k, {}), v) if isinstance(v, dict) else v
    return out


def merge(params: dict, settings: LoraSettings) -> dict:
    """The base tree (no adapter leaves) whose targeted kernels are W + (alpha / r) * A.B (into
    the fused slice for a slice target); stacked (scanned) layers are merged layer by layer."""
    def delta(a, b, ndim):
        if a.ndim + b.ndim - 2 == ndim:
            return jnp.tensordot(a, b, axes=1)
        return jax.vmap(lambda a, b: jnp.tensordot(a, b, axes=1))(a, b)  # leading layer axis

    def walk(tree):
        if not isinstance(tree, dict):
            return tree
        if "kernel" in tree and any(is_adapter(k) for k in tree):
            kernel = jnp.asarray(tree["kernel"])
            new = kernel.astype(jnp.float32)
            for name in [k for k in tree if k.startswith("lora_a")]:
                suffix = name[len("lora_a"):]
                d = settings.scale * delta(jnp.asarray(tree[name], jnp.float32),
                                           jnp.asarray(tree["lora_b" + suffix], jnp.float32),
                                           kernel.ndim - bool(suffix))
                if suffix:
                    index = FUSED_SLICES[settings.family][suffix[1:]][1]
                    slot = jnp.asarray(tree[name]).ndim - 1  # the kernel's fused axis
                    new = new.at[(slice(None),) * slot + (index,)].add(d)
                else:
                    new = new + d
            return {**{k: v for k, v in tree.items() if not is_adapter(k)}, "kernel": new.astype(kernel.dtype)}
        return {k: walk(v) for k, v in tree.items()}

    return walk(params)
