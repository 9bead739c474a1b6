"""LoRA as a parameter-tree transform: low-rank A/B adapters beside targeted Dense kernels.

A targeted kernel W of shape (in, *out) gets `lora_a` (in, rank) and `lora_b` (rank, *out) in the
same module scope. The model sees the merged kernel W + (alpha / rank) * A @ B (see `merge`), so no
model code changes: the apply function merges before calling the model. `lora_b` starts at zero, so
the initial model equals the base (as in PEFT). Target names are flax_lm's module names (the scope
holding the kernel); the per-family defaults mirror PEFT's defaults for the HF model.
"""

import jax
import jax.numpy as jnp

# PEFT's default targets per family, in flax_lm's module names of those projections.
DEFAULT_TARGETS = {
    "gpt2": ("c_attn",),
    "llama": ("q_proj", "v_proj"),
    "bert": ("query", "value"),
    "t5": ("q", "v"),
}


def default_targets(family: str) -> tuple[str, ...]:
    """The projection names LoRA adapts when `peft.targets` is empty."""
    if family not in DEFAULT_TARGETS:
        raise ValueError(f"peft.targets has no default for model.family={family}; set peft.targets")
    return DEFAULT_TARGETS[family]


def _is_target(scope: dict, name: str, targets) -> bool:
    return name in targets and isinstance(scope, dict) and "kernel" in scope


def add_adapters(params: dict, targets, rank: int, rng: jax.Array) -> dict:
    """A copy of `params` with `lora_a` (Kaiming-uniform, as PEFT) and `lora_b` (zeros) beside
    every targeted kernel. Raises ValueError when no module matches `targets`."""
    found = []

    def walk(tree, path):
        out = {}
        for name, sub in tree.items():
            if _is_target(sub, name, targets):
                kernel = sub["kernel"]
                key = jax.random.fold_in(rng, len(found))
                found.append("/".join(path + (name,)))
                bound = (1.0 / kernel.shape[0]) ** 0.5  # kaiming_uniform(a=sqrt(5)) on (rank, in)
                a = jax.random.uniform(key, (kernel.shape[0], rank), kernel.dtype, -bound, bound)
                b = jnp.zeros((rank,) + tuple(kernel.shape[1:]), kernel.dtype)
                out[name] = dict(sub, lora_a=a, lora_b=b)
            elif isinstance(sub, dict):
                out[name] = walk(sub, path + (name,))
            else:
                out[name] = sub
        return out

    result = walk(params, ())
    if not found:
        raise ValueError(f"peft.targets={','.join(targets)} matches no projection of this model")
    return result


def merge(params: dict, alpha: float, rank: int) -> dict:
    """The base tree (no lora_* leaves) whose targeted kernels are W + (alpha / rank) * A @ B."""
    scale = alpha / rank

    def walk(tree):
        if not isinstance(tree, dict):
            return tree
        if "lora_a" in tree:
            rest = {k: v for k, v in tree.items() if k not in ("lora_a", "lora_b")}
            delta = jnp.tensordot(tree["lora_a"], tree["lora_b"], axes=1)
            rest["kernel"] = tree["kernel"] + (scale * delta).astype(tree["kernel"].dtype)
            return rest
        return {k: walk(v) for k, v in tree.items()}

    return walk(params)


def trainable_mask(params: dict, keep=("classifier", "classifier_dense", "qa_outputs")) -> dict:
    """True for adapter leaves and for every leaf under a module named in `keep` (the task head
    stays trainable, as PEFT's modules_to_save)."""
    def walk(tree, inside):
        if not isinstance(tree, dict):
            return inside
        return {k: (inside or k in ("lora_a", "lora_b") or k in keep) if not isinstance(v, dict)
                else walk(v, inside or k in keep) for k, v in tree.items()}
    return walk(params, False)
