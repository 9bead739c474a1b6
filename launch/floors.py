"""Prints pip constraints that pin the oldest releases flax_lm claims: each `NAME>=VERSION` of
pyproject.toml's dependencies and of its torch extra as `NAME==VERSION`, so that the oldest test
leg (launch/test.sh) tests exactly the floors users are told, read from the one place they are set.

Usage: python launch/floors.py > constraints.txt
"""

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
EXTRAS = ("torch",)  # the test tools and the TFDS stack are installed at their newest


def floors(pyproject: Path = PYPROJECT) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = project["dependencies"] + [r for e in EXTRAS for r in project["optional-dependencies"][e]]
    pins = []
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", requirement.replace(" ", ""))
        if match is None:
            sys.exit(f"floors: {requirement!r} in {pyproject} is not NAME>=VERSION")
        pins.append(f"{match[1]}=={match[2]}")
        if match[1] == "tensorboard":  # TensorFlow (the test extra's) requires its own TensorBoard release
            pins.append(f"tensorflow-cpu=={match[2]}")
    return pins


if __name__ == "__main__":
    print("\n".join(floors()))
