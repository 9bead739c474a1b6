"""Loading, overriding and validating run configs.

A recipe is a Python file with `get_config()` returning an `ml_collections.ConfigDict`
built from `flax_lm.config.defaults.get_config()`. Command-line overrides use the
`--config.section.key=value` convention. Everything a user can get wrong here raises
`UserError` with one line naming the key.
"""

import ast
import difflib
import importlib.util
import json
import math
import re
import traceback
from pathlib import Path

import ml_collections

from flax_lm import derived_sizes
from flax_lm.config import defaults, training_length
from flax_lm.errors import UserError

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"

def load(path_or_name: str | None, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Loads a recipe file (or the name of one in the repo's configs/; None: the schema's defaults),
    applies `--config.key=value` overrides and validates the result. A key that a model family
    owns (`key.family` in defaults) and neither the recipe nor an override set takes the family's value."""
    cfg = defaults.get_config() if path_or_name is None else _load_recipe(path_or_name)
    problems = []   # all of them, in one error: a user fixes every override and value in one go
    for arg in overrides:
        try:
            apply_override(cfg, arg)
        except UserError as e:
            problems.append(str(e))
    defaults.schema().apply_family_defaults(cfg)   # after the overrides: they may choose the family
    try:
        validate(cfg)
    except UserError as e:
        problems.append(str(e))
    if problems:
        raise UserError("\n".join(dict.fromkeys(problems)))  # a problem said once, however often it occurs
    return cfg


def from_json(text: str) -> ml_collections.ConfigDict:
    """Rebuilds a validated config from the JSON a run saved in its workdir."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"the workdir's config.json is not valid JSON ({e}); "
                        f"restore it or start a new workdir") from None
    except (ValueError, RecursionError) as e:   # a number of over 4300 digits; nesting deeper than Python's stack
        raise UserError(f"the workdir's config.json cannot be read ({type(e).__name__})") from None
    if not isinstance(values, dict):
        raise UserError(f"the workdir's config.json holds a {type(values).__name__}, not a config object")
    cfg = defaults.get_config()
    _merge(cfg, values, prefix="")
    validate(cfg)
    return cfg


def _load_recipe(path_or_name: str) -> ml_collections.ConfigDict:
    """The recipe's config on a fresh schema; the family-owned keys it did not set are still unset there."""
    path = Path(path_or_name)
    if not path.exists() and not path.suffix:
        path = REPO_CONFIGS / f"{path_or_name}.py"
    if not path.is_file():
        known = sorted(p.stem for p in REPO_CONFIGS.glob("*.py"))
        raise UserError(f"--config: no config file {path_or_name!r} (configs here: {', '.join(known)})")
    if path.suffix != ".py":
        raise UserError(f"--config: {path} is not a Python file; a config is a .py file with get_config()")
    recipe = _run_recipe(path)
    if not isinstance(recipe, ml_collections.ConfigDict):
        raise UserError(f"--config: get_config() in {path} returned a {type(recipe).__name__}, not the "
                        f"ml_collections.ConfigDict of flax_lm.config.defaults.get_config()")
    # Re-apply the recipe onto a fresh schema so that a recipe cannot add keys; what it left to
    # the family stays unset there.
    unset = defaults.schema().unset_family_keys(recipe)
    values = recipe.to_dict()
    for name in unset:
        section, leaf = name.split(".")
        del values[section][leaf]
    cfg = defaults.get_config()
    _merge(cfg, values, prefix="")
    return cfg


def _run_recipe(path: Path):
    """What the recipe's get_config() returns; an error in the recipe is a UserError naming its line."""
    spec = importlib.util.spec_from_file_location(f"flax_lm_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise UserError(f"--config: {path} has no get_config() function")
        return module.get_config()
    except UserError:
        raise
    except SyntaxError as e:
        where = f"{path}:{e.lineno}" if e.lineno else str(path)
        raise UserError(f"--config: {where}: {_one_line(e.msg)}") from None
    except Exception as e:   # the recipe is the user's code: its error is theirs to fix, at its line
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if Path(f.filename) == path]
        where = f"{path}:{lines[-1]}" if lines else str(path)
        raise UserError(f"--config: {where}: {type(e).__name__}: {_one_line(str(e))}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _merge(cfg: ml_collections.ConfigDict, values: dict, prefix: str) -> None:
    for key, value in values.items():
        name = prefix + key
        if key not in cfg:
            raise UserError(_unknown_key(name))
        if isinstance(cfg[key], ml_collections.ConfigDict):
            if not isinstance(value, dict):
                raise UserError(f"config key {name!r} is a section, not a value")
            _merge(cfg[key], value, prefix=name + ".")
        else:
            cfg[key] = _coerce(name, cfg[key], value)


def apply_override(cfg: ml_collections.ConfigDict, arg: str) -> str:
    """Applies one `--config.a.b=value` argument; the value is parsed to the key's type. Returns
    the key's dotted name."""
    if not arg.startswith("--config.") or "=" not in arg:
        raise UserError(f"cannot read the argument {arg!r}: overrides look like --config.section.key=value")
    name, text = arg[len("--config."):].split("=", 1)
    current = _get(cfg, name)
    _set(cfg, name, _coerce(name, current, _parse_text(current, text)))
    return name


def _parse_text(current, text: str):
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        return text
    try:
        return ast.literal_eval(text)
    # Deep nesting exhausts the parser (MemoryError) or the stack; such text is no number either.
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _coerce(name: str, current, value):
    """Returns `value` as the type of the schema's `current`, or raises UserError."""
    expected = type(current)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:   # an int past the float range: as infinite as 1e999, refused below
            value = math.inf
    if type(value) is not expected:
        raise UserError(
            f"config key {name!r} must be {expected.__name__}, got {_short_repr(value)} ({type(value).__name__})")
    if expected is float and not math.isfinite(value):   # 1e999 reads as inf; JSON has NaN and Infinity
        raise UserError(f"config key {name!r} must be a finite number, got {value}")
    return value


def _short_repr(value) -> str:
    """repr(value), cut when long: a pasted file or a 5000-digit number would bury the message."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _get(cfg, name: str):
    node = cfg
    for part in name.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise UserError(_unknown_key(name))
        node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
        raise UserError(f"config key {name!r} is a section, not a value")
    return node


def _set(cfg, name: str, value) -> None:
    *parents, leaf = name.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def all_keys(cfg, prefix: str = "") -> list[str]:
    """The dotted names of every value of `cfg`, in its order."""
    keys = []
    for key, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys += all_keys(value, prefix + key + ".")
        else:
            keys.append(prefix + key)
    return keys


def _unknown_key(name: str) -> str:
    close = difflib.get_close_matches(name, all_keys(defaults.get_config()), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {name!r}{hint}"


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks values and combinations that do not depend on the devices; every problem found is
    one line of the UserError raised, so a user fixes them all in one go."""
    problems = []
    bad = set()   # keys with a value out of their own range: checks that combine them are skipped
    schema = defaults.schema()
    # Choices a table of a JAX-importing module holds are checked last, where their message always was.
    listed = [k for k in schema.values() if k.choices is not None and not callable(k.choices)]
    tabled = [k for k in schema.values() if callable(k.choices)]
    for k in listed:
        if _get(cfg, k.name) not in k.choices:
            problems.append(f"config key {k.name!r} must be one of {', '.join(k.choices)}; got {_get(cfg, k.name)!r}")
            bad.add(k.name)
    for k in schema.values():
        if k.range is not None and not k.range.holds(_get(cfg, k.name)):
            problems.append(f"config key {k.name!r} must be {k.range}; got {_get(cfg, k.name)}")
            bad.add(k.name)
    m, t, o = cfg.model, cfg.train, cfg.optim

    def fine(*names) -> bool:
        return not bad.intersection(names)

    if fine("model.n_heads") and m.d_model % m.n_heads and not m.head_dim:
        problems.append(f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads})")
    if fine("train.grad_accum_steps") and t.batch_size % t.grad_accum_steps:
        problems.append(
            f"train.batch_size ({t.batch_size}) must be divisible by train.grad_accum_steps ({t.grad_accum_steps})")
    from flax_lm.models.lora import DEFAULT_TARGETS  # here: the config layer loads without the models
    if cfg.peft.method == "lora" and not cfg.peft.targets and cfg.model.family not in DEFAULT_TARGETS:
        problems.append(f"peft.targets: model.family={cfg.model.family} has no default LoRA targets; name the "
                        f"projections to adapt (comma-separated)")
    if t.label_smoothing and cfg.task not in LANGUAGE_MODELLING:
        problems.append(f"train.label_smoothing applies to the tasks that predict text "
                        f"({', '.join(LANGUAGE_MODELLING)}); the task is {cfg.task!r}")
    if m.attention_dropout > 0 and m.attention != "reference":
        problems.append("model.attention_dropout > 0 needs model.attention=reference (fused kernels have no dropout)")
    problems += training_length.problems(t, o.warmup_steps)
    p = cfg.parallel
    if p.strategy == "pmap" and (p.fsdp != 1 or p.tensor != 1):
        problems.append(f"parallel.strategy=pmap is pure data parallelism: it needs parallel.fsdp=1 and "
                        f"parallel.tensor=1 (got {p.fsdp} and {p.tensor}); use parallel.strategy=jit to shard")
    if fine("model.n_heads"):
        problems += _task_problems(cfg)
    from flax_lm.generation import settings as generation_settings
    try:
        sample = generation_settings.from_sample_section(cfg.sample.to_dict())  # parses the stop ids
        if cfg.sample.max_new_tokens:
            sample.validate()
    except UserError as e:
        problems.append(f"sample.{e}")
    for k in tabled:   # their tables are read here: the modules import JAX, this one need not
        if _get(cfg, k.name) not in k.allowed():
            problems.append(f"{k.name} must be one of {', '.join(k.allowed())}; got {_get(cfg, k.name)!r}")
    try:
        parse_steps(t.profile_steps)
    except UserError as e:
        problems.append(str(e))
    if problems:
        raise UserError("\n".join(problems))


LANGUAGE_MODELLING = ("causal_lm", "span_corruption", "seq2seq")  # losses of a fused output projection
# task -> the model families that serve it (other tasks: bert)
ENCODERS = ("bert", "modernbert")   # the families of the other tasks
FAMILIES_OF_TASK = {"causal_lm": ("gpt2", "llama", "qwen3", "elmo"), "classification": ENCODERS + ("elmo",),
                    "token_classification": ENCODERS + ("elmo",), "span_corruption": ("t5",), "seq2seq": ("t5",),
                    "embedding": ("bert", "modernbert", "gpt2", "llama")}
GENERATE_METRICS = ("bleu", "chrf", "rouge")


def _task_problems(cfg) -> list[str]:
    """The task, the model family and the data must fit together: what does not, one line each."""
    problems = []
    families = FAMILIES_OF_TASK.get(cfg.task, ENCODERS)
    if cfg.model.family not in families:
        problems.append(f"task {cfg.task!r} needs model.family={' or '.join(families)} "
                        f"(model.family is {cfg.model.family!r})")
    if cfg.model.family == "t5":
        problems += _t5_problems(cfg)
    if cfg.model.family in ("llama", "qwen3"):
        problems += _llama_problems(cfg.model)
    if cfg.model.family == "elmo":
        problems += _elmo_problems(cfg)
    if cfg.data.seq_len > cfg.model.max_len:
        problems.append(f"data.seq_len ({cfg.data.seq_len}) must be at most model.max_len ({cfg.model.max_len})")
    if cfg.model.family == "modernbert" and cfg.model.scan_layers:
        problems.append("model.scan_layers: ModernBERT's layers differ (the first has no attention norm); "
                        "set model.scan_layers=False")
    if cfg.data.nsp and cfg.model.family == "modernbert":
        problems.append("data.nsp: ModernBERT has no next-sentence prediction head; set data.nsp=False")
    if cfg.data.nsp and cfg.model.variant == "roberta":
        problems.append("data.nsp: RoBERTa has no next-sentence prediction head; set data.nsp=False")
    window = cfg.data.seq_len or cfg.model.max_len
    if cfg.task == "question_answering" and cfg.data.doc_stride >= window - cfg.data.max_query_len - 3:
        problems.append(f"data.doc_stride ({cfg.data.doc_stride}) must be smaller than the context part of a window "
                        f"({window} tokens - data.max_query_len - 3 = {window - cfg.data.max_query_len - 3})")
    return problems


def _llama_problems(m) -> list[str]:
    problems = []
    n_kv_heads, head_dim = derived_sizes.filled(m, ("n_kv_heads", "head_dim")).values()   # before resolve fills them
    if m.n_heads % n_kv_heads:
        problems.append(f"model.n_heads ({m.n_heads}) must be divisible by model.n_kv_heads ({n_kv_heads}): "
                        f"each key/value head serves the same number of query heads")
    if head_dim % 2:
        problems.append(f"the head size ({head_dim}: model.head_dim, or model.d_model / model.n_heads) must be even "
                        f"for rotary position embeddings")
    return problems


def _elmo_problems(cfg) -> list[str]:
    from flax_lm.models.elmo import parse_filters   # models import JAX; validation of other families need not
    problems = []
    try:
        parse_filters(cfg.model.elmo_filters)
    except ValueError as e:
        problems.append(f"model.elmo_filters: {e}; write e.g. 1:32,2:64")
    if cfg.task == "causal_lm" and cfg.data.packing != "concat":
        problems.append("data.packing: ELMo's bidirectional LM reads windows of one token stream; set "
                        "data.packing=concat")
    return problems


def _t5_problems(cfg) -> list[str]:
    problems = []
    d = cfg.data
    if (d.target_len or d.seq_len) > cfg.model.max_len:
        problems.append(f"data.target_len ({d.target_len or d.seq_len}) must be at most model.max_len "
                        f"({cfg.model.max_len})")
    if cfg.optim.layer_decay != 1.0 or cfg.optim.unfreeze_top_layers:
        problems.append("optim.layer_decay and optim.unfreeze_top_layers are for single-stack models; T5 has an "
                        "encoder and a decoder stack: leave them at 1.0 and 0")
    unknown = [m for m in metric_names(cfg.train.generate_metrics) if m not in GENERATE_METRICS]
    if unknown:
        problems.append(f"train.generate_metrics: unknown metric {unknown[0]!r}; choose from "
                        f"{', '.join(GENERATE_METRICS)}")
    return problems


def metric_names(text: str) -> list[str]:
    """"bleu, chrf" -> ["bleu", "chrf"]."""
    return [m.strip().lower() for m in text.split(",") if m.strip()]


def parse_steps(text: str) -> tuple[int, int] | None:
    """(START, STOP) from "START:STOP" with 0 <= START < STOP; None for "" (off)."""
    if not text.strip():
        return None
    match = re.fullmatch(r"(\d{1,12}):(\d{1,12})", text.strip(), re.ASCII)
    if match and int(match[1]) < int(match[2]):
        return int(match[1]), int(match[2])
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise UserError(f"train.profile_steps must be START:STOP with 0 <= START < STOP, got {shown!r}")
