"""Which recipes fit which TPU topologies: each one's real train step compiled ahead of time
(`flax-lm compile`) on this machine with libtpu, one row per pair in bench/RESULTS.md.

    python -m bench.tpu_fit [--only gpt3_175b] [--no-record]
"""

import argparse
import os
import sys
import time

from bench.harness import add_row, machine
from flax_lm.config import load as config_lib
from flax_lm.training import tpu_compile

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for TPU; run nothing

TABLE_HEADING = "## TPU fit (train step compiled ahead of time for a topology, no TPU used)"
# (recipe, topology, slices, overrides). The GPU-minded recipes (gpt2_small, gpt2_medium,
# bert_base) are shown as they are and then with the changes `compile` suggests for a v5e slice.
SPLASH = "--config.model.attention=splash"  # the Pallas flash kernel: no T x T scores kept
FSDP_REMAT = ["--config.parallel.data=1", "--config.parallel.fsdp=-1", "--config.model.remat_policy=full"]
PAIRS = [
    ("gpt2_small", "v5e:4x4", 1, []), ("gpt2_small", "v5e:4x4", 1, FSDP_REMAT),
    ("gpt2_small", "v5e:4x4", 2, ["--config.parallel.data=2", *FSDP_REMAT[1:]]),
    ("gpt2_small", "v5e:4x4", 1, [SPLASH]), ("gpt2_small", "v5e:4x4", 1, [*FSDP_REMAT, SPLASH]),
    ("gpt2_medium", "v5e:4x4", 1, []), ("gpt2_medium", "v5e:4x4", 1, FSDP_REMAT),
    ("gpt2_large", "v5p:2x2x2", 1, []), ("gpt2_large", "v5p:2x2x2", 1, [FSDP_REMAT[-1]]),
    ("gpt2_xl", "v5p:2x2x4", 1, []),
    ("bert_base", "v5e:2x2", 1, []), ("bert_base", "v5e:2x2", 1, FSDP_REMAT), ("bert_large", "v5e:4x4", 1, []),
    ("gpt3_1p3b", "v5p:4x4x4", 1, []), ("gpt3_6p7b", "v5p:4x4x8", 1, []), ("gpt3_175b", "v5p:8x16x16", 1, []),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="just this recipe")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    about = machine()
    for recipe, topology, slices, overrides in PAIRS:
        if args.only and recipe != args.only:
            continue
        start = time.perf_counter()
        cfg = config_lib.load(recipe, overrides)
        report = tpu_compile.compile_train_step(cfg, tpu_compile.topology_devices(topology, slices), model_step=False)
        seconds = time.perf_counter() - start
        where = topology + (f" x {slices} slices" if slices > 1 else "")
        print(tpu_compile.format_report(" ".join([recipe, *overrides]), where, report),
              f"\n(compiled in {seconds:.0f} s)\n", flush=True)
        if not args.no_record:
            record(recipe, topology, slices, overrides, report, seconds, about)


def record(recipe: str, topology: str, slices: int, overrides: list[str], r: dict, seconds: float,
           about: dict) -> None:
    gib = tpu_compile.GIB
    m = r["per_chip_bytes"]
    where = topology + (f" x {slices} slices" if slices > 1 else "")
    command = " ".join(["flax-lm compile --config", recipe, "--topology", topology,
                        *([f"--num-slices {slices}"] if slices > 1 else []), *overrides])
    verdict = {True: "**fits**", False: "**does not fit**", None: "unknown HBM"}[r["fits"]]
    add_row(TABLE_HEADING, "| date | recipe | topology | chips, mesh | parameters | per chip: params + optimizer, "
            "temporaries, total | HBM | verdict | compile time | versions | command |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {about['date']} | {recipe} | {where} | {r['chips']}, {r['mesh']} | {r['params'] / 1e9:.3g}B | "
            f"{(m['parameters'] + m['optimizer_state']) / gib:.2f} GiB, {m['temporaries'] / gib:.2f} GiB, "
            f"{r['per_chip_total_bytes'] / gib:.2f} GiB | {(r['hbm_bytes'] or 0) / gib:.0f} GiB | {verdict} | "
            f"{seconds:.0f} s | jax {about['versions']['jax']} | `{command}` |")


if __name__ == "__main__":
    sys.exit(main())
