"""Writes the generated pages of the docs: the command line (from flax_lm.cli's argparse parser),
the config reference (from flax_lm.config.defaults' key(...) declarations) and the benchmarks page (from
bench/RESULTS.md, with the plots of bench/plots.py).

Run before `mkdocs build` (launch/docs.sh does): python docs/gen/reference.py
The imports below are the only places the docs depend on the library's module layout.
"""

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax_lm.cli as cli  # noqa: E402  the `flax-lm` command: its argparse parser is cli._parser()
from flax_lm.config.defaults import schema  # noqa: E402  each config key's facts
from flax_lm import derived_sizes  # noqa: E402  the rule of each model size 0 leaves derived

OUT = ROOT / "docs" / "reference"


def _md(text: str) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    flag = ", ".join(action.option_strings)
    if action.nargs == 0:
        return f"`{flag}`"
    value = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices
                               else action.dest.upper())
    return f"`{flag} {value}`"


def command_line() -> str:
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    lines = ["# Command line", "",
             "Generated from the `flax-lm` argparse parser (`flax_lm/cli.py`) when the docs are built.", "",
             _md(" ".join(cli.__doc__.split())), "",
             "| command | what it does |", "| --- | --- |"]
    lines += [f"| [`{name}`](#{name}) | {_md(helps.get(name, ''))} |" for name in sub.choices]
    for name, p in sub.choices.items():
        lines += ["", f"## {name}", "", _md(helps.get(name, "")), "", "```", p.format_usage().strip(), "```", ""]
        lines += ["| argument | required | default | help |", "| --- | --- | --- | --- |"]
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            default = "" if action.default in (None, False, argparse.SUPPRESS) else f"`{action.default}`"
            required = "yes" if action.required else ""
            lines.append(f"| {_flags(action)} | {required} | {default} | {_md(action.help)} |")
        groups = [g for g in p._mutually_exclusive_groups if g.required]
        for g in groups:
            names = " or ".join(f"`{a.option_strings[0]}`" for a in g._group_actions)
            lines += ["", f"One of {names} is required."]
        if p.epilog:
            lines += ["", _md(p.epilog)]
    return "\n".join(lines) + "\n"


def config_reference() -> str:
    keys = schema()
    lines = ["# Config reference", "",
             "Generated from the schema (`flax_lm/config/defaults.py`) when the docs are built: every key a recipe "
             "may set, with its type, default, the values it may take, whether a resumed run may change it, and "
             "its meaning. Override any of them on the command line with `--config.section.key=value`; "
             "`flax-lm config --keys PATTERN` prints the same facts.", "",
             "A model family gives some keys defaults of its own, used when the family is chosen and neither the "
             "recipe nor an override sets the key: " + "; ".join(
                 f"{family}: " + ", ".join(f"`{k}={v!r}`" for k, v in keys.family_defaults(family).items())
                 for family in keys["model.family"].choices if keys.family_defaults(family)) + ".", "",
             "A model size at 0 is derived (" + ", ".join(f"`model.{size}`: {words}" for size, (words, _)
                                                        in derived_sizes.RULES.items()) + ") where the family "
             "has that size: " + "; ".join(f"{family}: " + ", ".join(keys.derived_sizes(family))
                                           for family in keys["model.family"].choices) + ". A run fills these "
             "sizes, and the data lengths at 0, once before it starts (`flax_lm/config/resolve.py`), so its "
             "`config.json` holds the real values; a resumed run compares both configs so resolved.", ""]
    section = None
    for name, k in keys.items():
        head = name.split(".")[0] if "." in name else "top level"
        if head != section:
            section = head
            lines += ["", f"## {section}", "", "| key | type | default | values | safe on resume | meaning |",
                      "| --- | --- | --- | --- | --- | --- |"]
        values = ", ".join(f"`{c}`" for c in k.allowed()) if k.choices is not None else (str(k.range) if k.range
                                                                                       else "")
        arch = " Part of the architecture (`train.init_from` takes it from the source)." if k.architecture else ""
        lines.append(f"| `{name}` | {k.type.__name__} | `{k.default!r}` | {_md(values)} | "
                     f"{'yes' if k.safe_on_resume else ''} | {_md(k.help + arch)} |")
    return "\n".join(lines) + "\n"


PLOTS = {"## CPU backend": ("cpu_vs_pytorch.png", "CPU backend against PyTorch eager"),
         "## TPU modelled step against MaxText": ("tpu_vs_maxtext.png", "TPU modelled step against MaxText")}


def benchmarks() -> str:
    """bench/RESULTS.md as a docs page, each plot under the section it belongs to (the figures
    live in RESULTS.md and bench/results/*.json only)."""
    text = (ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    for heading, (png, alt) in PLOTS.items():
        start = text.find(heading)
        end = text.find("\n## ", start + 1)
        if start >= 0 and (ROOT / "docs" / "img" / png).is_file():
            text = text[:end] + f"\n\n![{alt}](img/{png})\n" + text[end:]
    text = text.replace("(../docs/", "(")
    return text.replace("# Benchmark results", "# Benchmarks\n\nThis page is `bench/RESULTS.md`.", 1)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (ROOT / "docs" / "benchmarks.md").write_text(benchmarks(), encoding="utf-8")
    (OUT / "cli.md").write_text(command_line(), encoding="utf-8")
    (OUT / "config.md").write_text(config_reference(), encoding="utf-8")
    print("wrote docs/reference/cli.md, docs/reference/config.md and docs/benchmarks.md")


if __name__ == "__main__":
    main()
