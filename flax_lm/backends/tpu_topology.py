"""TPU topology names as users type them, turned into the names libtpu's topology descriptions take.

Three spellings are accepted:
- libtpu's own, GENERATION:SHAPE, e.g. v5e:2x4, v5p:2x2x1, v6e:4x4 (chips along each axis);
- gcloud's accelerator types and MaxText's `compile_topology`, GENERATION-N, e.g. v5litepod-8 (= v5e-8),
  v6e-8, v5p-8, v4-8. v5e and v6e names count chips; v5p and v4 names count TensorCores, two a chip,
  so v5p-8 is 4 chips (2x2x1) and v5p-128 is 64 (4x4x4).
"""

from flax_lm.errors import UserError

# The slice shapes of the 2-D generations (chips), as gcloud lays them out.
_SHAPES_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
# The slice shapes of the 3-D generations (chips).
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16", 8192: "16x16x32"}
# generation spelled in a GENERATION-N name: (libtpu's generation, how many of N make a chip, shapes)
_GENERATIONS = {"v5e": ("v5e", 1, _SHAPES_2D), "v5litepod": ("v5e", 1, _SHAPES_2D), "v6e": ("v6e", 1, _SHAPES_2D),
                "v5p": ("v5p", 2, _SHAPES_3D), "v4": ("v4", 2, _SHAPES_3D)}
ACCEPTED = ("GENERATION:SHAPE as libtpu names it (v5e:2x4, v5p:2x2x1, v6e:4x4) or a gcloud/MaxText accelerator type "
            "(v5e-8 = v5litepod-8 and v6e-8 count chips: "
            f"{', '.join(map(str, _SHAPES_2D))}; v5p-8 and v4-8 count TensorCores, 2 a chip: "
            f"{', '.join(str(2 * n) for n in _SHAPES_3D)})")


def libtpu_name(name: str) -> str:
    """The libtpu topology name (e.g. v5p:2x2x1) of a name users type (e.g. v5p-8); one line on an unknown one."""
    name = name.strip().lower()
    if ":" in name:
        generation, _, shape = name.partition(":")
        if generation in {g for g, _, _ in _GENERATIONS.values()} and all(p.isdigit() for p in shape.split("x")):
            return name
    else:
        generation, _, count = name.rpartition("-")
        if generation in _GENERATIONS and count.isdigit():
            libtpu_generation, per_chip, shapes = _GENERATIONS[generation]
            chips, rest = divmod(int(count), per_chip)
            if rest == 0 and chips in shapes:
                return f"{libtpu_generation}:{shapes[chips]}"
    raise UserError(f"--topology {name!r} is not a TPU topology name; give {ACCEPTED}")
