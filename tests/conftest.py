"""Test setup: 8 CPU devices for every test, paths to the shared data, a tiny config."""

import os

# CPU only, even where libtpu is installed (for compiling to TPU topologies): no TPU probe at start;
# bench/gpu.sh names the GPU for tests/test_gpu.py
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def xla_flags(devices: int = 8) -> str:
    """XLA_FLAGS for tests and the processes they start: `devices` CPU devices and, computing on
    the CPU, LLVM without its optimisations. Tests compile hundreds of small programs and run each
    for a few steps, so LLVM's default level 2 costs them more time than it saves (a tiny
    `flax-lm train` took 7.0 s, 5.0 s at 0)."""
    unoptimised = " --xla_backend_optimization_level=0" if os.environ["JAX_PLATFORMS"] == "cpu" else ""
    return f"--xla_force_host_platform_device_count={devices}{unoptimised}"


# Before JAX is imported anywhere: sharding is tested on 8 devices everywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags()).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"


def tiny_config(**sections):
    """A config small enough to train in seconds on CPU; `sections` update it, e.g.
    tiny_config(train=dict(steps=4))."""
    from flax_lm.config import load as config, defaults
    c = defaults.get_config()
    c.model.update(vocab_size=512, max_len=32, d_model=64, n_layers=2, n_heads=4)
    c.data.update(source=str(SHAKESPEARE), max_bytes=200_000)
    c.train.update(steps=20, batch_size=16, log_every=5, eval_every=10, eval_batches=2, checkpoint_every=10,
                   progress_bar=False, async_checkpointing=True)
    c.optim.update(learning_rate=3e-3, warmup_steps=2)
    c.sample.update(max_new_tokens=0)
    for section, values in sections.items():
        c[section].update(values)
    config.validate(c)
    return c


@pytest.fixture
def shakespeare():
    if not SHAKESPEARE.is_file():
        pytest.skip(f"shared data not found at {SHAKESPEARE}")
    return SHAKESPEARE


@pytest.fixture
def phased_cache(monkeypatch):
    """Decoding loops compiled afresh with a cache that starts as short as it can and doubles
    (`generation.growing`), so that a tiny model's short loops run in several phases."""
    from flax_lm.generation import beam_search, growing, sampling
    monkeypatch.setattr(growing, "SMALLEST", 1)
    monkeypatch.setattr(growing, "WORTH", 0.0)
    loops = (sampling.sample, beam_search.beam_search)
    for loop in loops:
        loop.clear_cache()
    yield
    for loop in loops:  # the next test compiles with the phases it expects
        loop.clear_cache()
