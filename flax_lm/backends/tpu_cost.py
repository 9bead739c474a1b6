"""The modelled run time of a program compiled for a TPU, from the TPU compiler's own cost model.

`compiled.cost_analysis()` of a TPU executable gives `optimal_seconds` (a per-op sum close to a
roofline), `flops` and `bytes accessed`, per chip. Checked on probe programs (tests/test_tpu_compile.py):
- it adds exactly -1 s for every `ConcatBitcast` custom call and every `rng-bit-generator` op, so
  their count in the optimized HLO is added back;
- a while loop's body is counted once, whatever its trip count. `loops` lists every while loop of
  the optimized HLO with its trip count; a figure is only a step's when no loop is left, which is
  why the measured program is compiled with its loops unrolled (see tpu_compile.measured_config);
- collectives are priced as memory traffic only; `collective_bytes` counts what they move.

Units: seconds, FLOPs, bytes, all per chip and per call of the program.
"""

import re
from dataclasses import dataclass

GIB = 2 ** 30


@dataclass(frozen=True)
class Chip:
    """One TPU chip: dense bf16 peak (FLOP/s), HBM bandwidth (bytes/s) and HBM size (bytes)."""
    peak_flops: float
    hbm_bandwidth: float
    hbm_bytes: int


# By the device kind libtpu reports; Google Cloud's published per-chip figures.
CHIPS = {
    "TPU v4": Chip(275e12, 1228e9, 32 * GIB),
    "TPU v5 lite": Chip(197e12, 819e9, 16 * GIB),      # v5e
    "TPU v5": Chip(459e12, 2765e9, 95 * GIB),           # v5p
    "TPU v5p": Chip(459e12, 2765e9, 95 * GIB),
    "TPU v6 lite": Chip(918e12, 1640e9, 32 * GIB),      # v6e (Trillium)
}
METHOD = ("cost_analysis()['optimal_seconds'] of the compiled step, +1 s for each ConcatBitcast custom call and "
          "rng-bit-generator op in the optimized HLO (the cost model prices each at -1 s), compiled with the "
          "layers unrolled and without collective-matmul loops (xla_tpu_enable_windowed_einsum_for_* off) so that "
          "no while loop's body is counted once")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_ARRAY = re.compile(r"\b(pred|s4|u4|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64|f8e4m3fn|f8e5m2|c64|c128)"
                    r"\[([\d,]*)\]")
_BITS = {"pred": 8, "s4": 4, "u4": 4, "c64": 64, "c128": 128, "f8e4m3fn": 8, "f8e5m2": 8}
_CALLEES = re.compile(r"\b(body|condition|calls|to_apply|branch_computations)=\{?(%?[\w.\-]+(?:, %?[\w.\-]+)*)\}?")


def _array_bytes(shape: str) -> list[int]:
    """Bytes of each array in an HLO shape such as (s32[], bf16[8,128]{1,0})."""
    out = []
    for dtype, dims in _ARRAY.findall(shape):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        out.append(n * _BITS.get(dtype, int(re.sub(r"\D", "", dtype) or 8)) // 8)
    return out


def _parse(hlo: str) -> tuple[dict, str]:
    """{computation: [(name, shape, opcode, rest of line)]} of an HLO module's text, and the entry's name."""
    computations, entry, current = {}, None, None
    for line in hlo.splitlines():
        if not line.startswith(" "):
            header = _HEADER.match(line)
            if header:
                current = computations.setdefault(header.group(1), [])
                entry = header.group(1) if line.startswith("ENTRY") else entry
            continue
        m = _INSTRUCTION.match(line)
        if m and current is not None:
            current.append(m.groups())
    return computations, entry


def _trip_count(while_rest: str, computation: list, computations: dict) -> int | None:
    """The trip count of a while loop: XLA's known_trip_count annotation, else `i < N` (or `<=`) in its
    condition with i's start value a constant in the loop's initial tuple."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', while_rest)
    if known:
        return int(known.group(1))
    condition = re.search(r"condition=%?([\w.\-]+)", while_rest).group(1)
    ops = {name: (opcode, rest) for name, _, opcode, rest in computations.get(condition, [])}
    root = next((rest for name, _, opcode, rest in computations.get(condition, [])[-1:] if opcode == "compare"), None)
    if root is None:
        return None
    operands = re.findall(r"%([\w.\-]+)", root.split(")")[0])
    direction = re.search(r"direction=(\w+)", root)
    if len(operands) != 2 or direction is None or direction.group(1) not in ("LT", "LE", "GT", "GE"):
        return None
    consts = [_constant(ops, o) for o in operands]
    counters = [re.search(r"index=(\d+)", ops[o][1]) if ops.get(o, ("",))[0] == "get-tuple-element" else None
                for o in operands]
    local = {name: (opcode, rest) for name, _, opcode, rest in computation}
    init_tuple = re.match(r"%?([\w.\-]+)", while_rest).group(1)
    if local.get(init_tuple, ("",))[0] != "tuple":
        return None
    elements = re.findall(r"%([\w.\-]+)", local[init_tuple][1].split(")")[0])
    for i, (bound, counter) in enumerate(zip(consts, reversed(counters))):
        if bound is None or counter is None:
            continue
        start = _constant(local, elements[int(counter.group(1))])
        if start is None:
            return None
        d = direction.group(1)
        if i == 0:  # the bound is the left operand: N > i, N >= i
            d = {"LT": "GT", "LE": "GE", "GT": "LT", "GE": "LE"}[d]
        span = bound - start if d in ("LT", "GT") else bound - start + 1
        return max(span if d in ("LT", "LE") else -span, 0)
    return None


def _constant(ops: dict, name: str) -> int | None:
    """The integer value of `name` when it is a scalar constant (through copies)."""
    while name in ops and ops[name][0] in ("copy", "bitcast", "convert"):
        name = re.findall(r"%([\w.\-]+)", ops[name][1])[0]
    if name in ops and ops[name][0] == "constant":
        value = re.match(r"\s*(-?\d+)\)", ops[name][1])
        return int(value.group(1)) if value else None
    return None


def _group_size(rest: str) -> int:
    """Devices in each replica group of a collective: replica_groups=[G,S]<=[N] or {{0,1,..},..}."""
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", rest)
    if iota:
        return int(iota.group(2))
    groups = re.search(r"replica_groups=\{\{([\d,]*)\}", rest)
    return len(groups.group(1).split(",")) if groups else 1


def hlo_summary(hlo: str) -> dict:
    """What the cost model misprices in an optimized HLO module's text: `minus_one_ops` (ConcatBitcast
    custom calls and rng-bit-generator ops), `loops` ([{"body", "trip_count"}], None where not known)
    and `collective_bytes` (bytes each collective moves, its larger side, times the trip counts of the
    loops it runs in)."""
    computations, entry = _parse(hlo)
    minus_one = sum(1 for ops in computations.values() for _, _, opcode, rest in ops
                    if opcode == "rng-bit-generator" or (opcode == "custom-call" and "ConcatBitcast" in rest))
    loops, weight = [], {}

    def visit(name: str, times: float) -> None:
        weight[name] = weight.get(name, 0) + times
        for _, _, opcode, rest in computations.get(name, []):
            if opcode == "while":
                trips = _trip_count(rest, computations[name], computations)
                body = re.search(r"body=%?([\w.\-]+)", rest).group(1)
                loops.append({"body": body, "trip_count": trips})
                visit(body, times * (trips if trips is not None else 1))
                continue
            for _, callees in _CALLEES.findall(rest):
                for callee in re.findall(r"%?([\w.\-]+)", callees):
                    if callee in computations and callee != name:
                        visit(callee, times)

    if entry is not None:
        visit(entry, 1)
    collective = 0.0
    for name, ops in computations.items():
        for _, shape, opcode, rest in ops:
            kind = opcode.removesuffix("-start")
            if kind in COLLECTIVES:
                moved = max(_array_bytes(shape), default=0)
                if kind == "reduce-scatter":  # its operand is the group's size times its result
                    moved *= _group_size(rest)
                collective += moved * weight.get(name, 0)
    return {"minus_one_ops": minus_one, "loops": loops, "collective_bytes": int(collective)}


def models_run_time(compiled) -> bool:
    """Whether the compiler priced `compiled`'s run time: a TPU executable's cost analysis has
    `optimal_seconds`, a CPU one's does not."""
    cost = compiled.cost_analysis()
    return "optimal_seconds" in (cost[0] if isinstance(cost, list) else cost)


def model_step(compiled, device_kind: str) -> dict:
    """The modelled run of one call of `compiled` (a TPU executable) on one chip of `device_kind`:
    `modeled_step_seconds` (corrected optimal_seconds), `flops`, `bytes_accessed`, `collective_bytes`,
    `roofline_seconds` (max of FLOPs / peak and bytes / HBM bandwidth; None for an unknown chip),
    `minus_one_ops` and `loops` (see hlo_summary)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    summary = hlo_summary(compiled.as_text())
    flops, moved = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    chip = CHIPS.get(device_kind)
    roofline = None if chip is None else max(flops / chip.peak_flops, moved / chip.hbm_bandwidth)
    return {"modeled_step_seconds": float(cost["optimal_seconds"]) + summary["minus_one_ops"],
            "flops": flops, "bytes_accessed": moved, "roofline_seconds": roofline, **summary}
