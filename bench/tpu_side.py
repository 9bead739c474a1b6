"""One side of `python -m bench tpu`, run in the MaxText virtualenv: prints the modelled step as one JSON line.

    python -m bench.tpu_side flax compile --config gpt2_small --topology v5e-4 ...
    python -m bench.tpu_side maxtext decoder_block=gpt3 ... compile_topology=v5e-4 ...
"""

import json
import sys
import tempfile
from pathlib import Path


def versions() -> str:
    import jax
    from importlib.metadata import version
    return f"jax {jax.__version__}, libtpu {version('libtpu')}"


def flax_side(args: list[str]) -> dict:
    """`flax-lm compile` itself (its JSON report); fails unless it fits."""
    from flax_lm import cli
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        status = cli.main([*args, "--json", str(out)])
        if status != 0:
            raise SystemExit(status)
        return json.loads(out.read_text())


def maxtext_side(args: list[str]) -> dict:
    """MaxText's own AOT entry (train_compile.main) for the args; its compiled step priced as flax_lm's is."""
    import maxtext
    from maxtext.trainers.pre_train import train_compile

    from flax_lm.training import tpu_compile
    from flax_lm.backends import tpu_cost
    kept = {}
    compile_step = train_compile.jit_and_compile

    def compile_and_keep(*a, **k):  # the real compile; the executable kept to price it
        kept["compiled"] = compile_step(*a, **k)
        return kept["compiled"]

    train_compile.jit_and_compile = compile_and_keep
    # the same measuring method as flax_lm's: no collective-matmul loops
    flags = " ".join(f"--{k}={str(v).lower()}" for k, v in tpu_compile.NO_COLLECTIVE_MATMUL_LOOPS.items())
    base = Path(maxtext.__file__).parent / "configs/base.yml"
    train_compile.main(["train_compile.py", str(base), *args, f"compile_xla_flags={flags}"])
    topology = next(a.split("=", 1)[1] for a in args if a.startswith("compile_topology="))
    kind = tpu_compile.topology_devices(topology)[0].device_kind
    model = tpu_cost.model_step(kept["compiled"], kind)
    memory = kept["compiled"].memory_analysis()
    return {"modeled_step_seconds": model["modeled_step_seconds"], "bytes_accessed_per_chip": model["bytes_accessed"],
            "modeled_flops_per_chip": model["flops"], "collective_bytes_per_chip": model["collective_bytes"],
            "roofline_seconds": model["roofline_seconds"], "loops_counted_once": model["loops"],
            "temporaries_bytes": memory.temp_size_in_bytes, "device_kind": kind}


if __name__ == "__main__":
    side, rest = sys.argv[1], sys.argv[2:]
    result = flax_side(rest) if side == "flax" else maxtext_side(rest)
    print(json.dumps({**result, "versions": versions()}), flush=True)
