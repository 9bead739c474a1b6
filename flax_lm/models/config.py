"""The fields every model family's config dataclass shares."""

import dataclasses

from flax_lm import derived_sizes


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes, regularisation, dtypes and layer execution common to every family; a family's
    dataclass adds its own fields and may give these other defaults."""

    vocab_size: int
    max_len: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention: str = "auto"

    def __post_init__(self):
        # A size at 0 (a config built without `flax_lm.config.resolve`: from a Hugging Face config.json,
        # or directly) is derived by the rule resolve fills a run config's by, so both see one number.
        names = [f.name for f in dataclasses.fields(self) if f.name in derived_sizes.RULES]
        for name, value in derived_sizes.filled(vars(self), names).items():
            object.__setattr__(self, name, value)
