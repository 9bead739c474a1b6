"""Writes the generated pages of the docs: the command line (from flax_lm.cli's argparse parser),
the config reference (from flax_lm.config.defaults' key(...) declarations) and the benchmarks page (from
bench/RESULTS.md, with the plots of bench/plots.py).

Run before `mkdocs build` (launch/docs.sh does): python docs/gen/reference.py
The two imports below are the only places the docs depend on the library's module layout.
"""

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax_lm.cli as cli  # noqa: E402  the `flax-lm` command: its argparse parser is cli._parser()
from flax_lm.config.defaults import get_config, key_help  # noqa: E402  the config schema and each key's help

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
    cfg, helps = get_config(), key_help()
    lines = ["# Config reference", "",
             "Generated from the schema (`flax_lm/config/defaults.py`) when the docs are built: every key a recipe "
             "may set, with its type, default and meaning. Override any of them on the command line with "
             "`--config.section.key=value`; `flax-lm config --keys PATTERN` prints the same facts.", ""]
    section = None
    for name, text in helps.items():
        head = name.split(".")[0] if "." in name else "top level"
        if head != section:
            section = head
            lines += ["", f"## {section}", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        value = cfg
        for part in name.split("."):
            value = value[part]
        lines.append(f"| `{name}` | {type(value).__name__} | `{value!r}` | {_md(text)} |")
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
