"""Weights moved onto huge pages (`huge_pages`): the kernel really moves an array's pages, its
values stay, `decoder.prepared` moves the weights a step reads whole, and FLAX_LM_HUGE_PAGES=0
turns it off."""

import platform
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_lm import huge_pages
from flax_lm.generation import CausalDecoder, GenerationConfig, generate
from flax_lm.models import gpt2
from flax_lm.models.layers import OUT_MAJOR


def _kernel_moves_pages() -> bool:
    """Linux 6.1 or later (MADV_COLLAPSE) with transparent huge pages not turned off."""
    if platform.system() != "Linux":
        return False
    release = tuple(int(n) for n in re.findall(r"\d+", platform.release())[:2])
    enabled = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return release >= (6, 1) and enabled.exists() and "[never]" not in enabled.read_text()


needs_huge_pages = pytest.mark.skipif(not _kernel_moves_pages(), reason="the kernel moves no pages onto huge pages")


def _mappings(start: int, end: int) -> list[tuple[int, int, int]]:
    """(first address, end, AnonHugePages in KiB) of each of this process's mappings that hold
    part of [start, end). A buffer may span several (mappings of different flags lie side by
    side unmerged): counting only the one that held its start once saw 4 of the 14 MiB moved, in
    a test process that had run many tests before."""
    found, current = [], None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if m := re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line):
            first, last = int(m[1], 16), int(m[2], 16)
            current = [first, last] if first < end and last > start else None
        elif current is not None and line.startswith("AnonHugePages:"):
            found.append((*current, int(line.split()[1])))
    assert found, f"no mapping holds {start:#x}"
    return found


def _huge_kib(mappings) -> int:
    return sum(kib for *_, kib in mappings)


def _span(x: jax.Array) -> tuple[int, int]:
    return x.unsafe_buffer_pointer(), x.unsafe_buffer_pointer() + x.nbytes


@needs_huge_pages
def test_an_arrays_pages_move_onto_huge_pages_and_its_values_stay():
    x = jax.block_until_ready(jnp.arange(4 << 20, dtype=jnp.float32))  # 16 MiB, written by XLA
    before = _mappings(*_span(x))
    moved = huge_pages.collapse({"x": x, "small": jnp.ones(8)})
    assert moved >= 14 << 20 and moved % huge_pages.HUGE_PAGE == 0   # at least the 7 pages wholly inside it
    after = _mappings(*_span(x))
    assert _huge_kib(after) - _huge_kib(before) >= 14 << 10, (before, after)
    np.testing.assert_array_equal(x, np.arange(4 << 20, dtype=np.float32))
    assert huge_pages.collapse(jnp.ones(1000)) == 0   # a few KiB are not worth a page's copy


def test_no_pages_move_with_flax_lm_huge_pages_0(monkeypatch):
    monkeypatch.setenv("FLAX_LM_HUGE_PAGES", "0")
    huge_pages._madvise.cache_clear()
    try:
        assert huge_pages.collapse(jax.block_until_ready(jnp.zeros(4 << 20))) == 0
    finally:
        monkeypatch.undo()
        huge_pages._madvise.cache_clear()


@needs_huge_pages
def test_prepared_weights_move_the_arrays_a_step_reads_whole(monkeypatch):
    """A bfloat16 GPT-2 whose tied embedding is 4 MiB: `prepared` moves it and the out-major
    kernels, and decodes as the parameters do."""
    cfg = gpt2.GPT2Config(vocab_size=8192, max_len=32, d_model=256, n_layers=2, n_heads=4, d_ff=1024,
                          dtype="bfloat16")
    model = gpt2.GPT2LMHeadModel(cfg)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    seen = []
    collapse = huge_pages.collapse
    monkeypatch.setattr(huge_pages, "collapse", lambda arrays: seen.append(arrays) or collapse(arrays))
    decoder = CausalDecoder(model)
    prepared = decoder.prepared(params, 1)
    moved = {id(x) for x in jax.tree.leaves(seen)}
    variables = prepared.variables
    assert id(variables["params"]["wte"]["embedding"]) in moved
    assert {id(x) for x in jax.tree.leaves(variables[OUT_MAJOR])} <= moved
    assert _huge_kib(_mappings(*_span(variables["params"]["wte"]["embedding"]))) >= 2 << 10
    config = GenerationConfig(max_new_tokens=6)
    assert generate(decoder, prepared, [[1, 2, 3]], config) == generate(decoder, params, [[1, 2, 3]], config)
