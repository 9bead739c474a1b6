"""`python -m bench`: every figure in the JSON, and one row in the right table of RESULTS.md,
from the tiniest models (the speeds themselves belong to bench/, not to tests)."""

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import jax
import pytest

from bench import __main__ as bench_main
from bench import bert_mlm, gpt2_generate, gpt2_train, harness, max_batch
from flax_lm.config import load as config_lib
from flax_lm.training import tpu_compile
from flax_lm.models import gpt2

TINY = ["--config.model.d_model=32", "--config.model.n_layers=2", "--config.model.n_heads=2",
        "--config.model.vocab_size=256"]
FAST = ["--steps", "2", "--rounds", "1", "--warmup", "1", "--no-record"]
PEAK = 1e12
# the benchmarks that measure PyTorch beside flax_lm
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="PyTorch is not installed (pip install flax_lm[torch])")


@pytest.fixture(scope="module")
def gpt2_result(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "gpt2.json"
    argv = ["gpt2-train", "--config", "gpt2_tiny", "--batch", "2", "--seq-len", "16", *FAST, "--json", str(path),
            "--peak-flops", str(PEAK), *TINY]
    returned = bench_main.main(argv)
    result = json.loads(path.read_text())
    assert result == json.loads(json.dumps(returned))
    return result, argv


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="PyTorch is installed")
def test_a_benchmark_without_pytorch_says_in_one_line_what_to_install():
    with pytest.raises(SystemExit) as exited:
        bench_main.main(["gpt2-train", "--config", "gpt2_tiny", *FAST, *TINY])
    assert exited.value.code == "bench: the reference side is PyTorch, which is not installed: " \
                                "pip install 'flax_lm[torch]'"


@needs_torch
def test_gpt2_train_reports_every_figure_for_both_sides(gpt2_result):
    r, argv = gpt2_result
    assert r["command"] == "python -m bench " + " ".join(argv)
    assert (r["batch"], r["seq_len"], r["vocab"], r["dtype"]) == (2, 16, 256, "float32")
    assert r["device"] == "cpu" and r["torch_device"] == "cpu" and r["date"]
    assert set(r["versions"]) >= {"jax", "jaxlib", "flax", "torch", "transformers"}
    for side in ("flax_lm", "torch_eager"):
        figures, times = r[side], r[side]["step_time_s"]
        assert times["n"] == 2 and times["min"] <= times["p25"] <= times["median"] <= times["p75"] <= times["max"]
        assert times["iqr"] == pytest.approx(times["p75"] - times["p25"])
        assert figures["tokens_per_sec"] == pytest.approx(2 * 16 / times["median"])
        assert figures["sequences_per_sec"] == pytest.approx(2 / times["median"])
        for formula in ("nanogpt", "llmc"):
            assert figures[f"mfu_{formula}"] == pytest.approx(
                figures["tokens_per_sec"] * r["flops_per_token"][formula] / PEAK)
    assert r["speedup_vs_torch_eager"] == pytest.approx(
        r["torch_eager"]["step_time_s"]["median"] / r["flax_lm"]["step_time_s"]["median"])
    assert r["peak_memory_bytes"] == {"flax_lm": None, "torch": None}  # CPU: neither library counts


@needs_torch
def test_the_two_flop_formulas(gpt2_result):
    r, _ = gpt2_result
    cfg = gpt2.GPT2Config(vocab_size=256, max_len=16, d_model=32, n_layers=2, n_heads=2, d_ff=128)
    n_all = gpt2.num_params(cfg, include_positions=True)
    assert r["params"] == n_all
    # nanoGPT: 6N + 12 L H Q T, N without the position embeddings; llm.c: 6N + 6 L C T, N all parameters
    assert r["flops_per_token"]["nanogpt"] == 6 * (n_all - 16 * 32) + 12 * 2 * 2 * 16 * 16
    assert r["flops_per_token"]["llmc"] == 6 * n_all + 6 * 2 * 32 * 16


def test_without_a_known_peak_mfu_is_null():
    figures = harness.side_figures([0.5, 0.7], 100, 4, {"nanogpt": 1.0, "llmc": 2.0}, None)
    assert figures["mfu_nanogpt"] is None and figures["mfu_llmc"] is None
    assert figures["tokens_per_sec"] == pytest.approx(100 / 0.6)


def _recorded_row(table, result, tmp_path, monkeypatch) -> tuple[list[str], list[str]]:
    """(the header cells, the new row's cells) of `table` after recording `result` in a copy of RESULTS.md."""
    tmp_path.mkdir(exist_ok=True)
    copy = tmp_path / "RESULTS.md"
    shutil.copy(harness.RESULTS, copy)
    before = copy.read_text()
    monkeypatch.setattr(harness, "RESULTS", copy)
    table.record(result)
    text = copy.read_text()

    def section_of(text):
        start = text.find(table.heading)
        if start < 0:
            return []
        end = text.find("\n## ", start)
        return text[start:end if end > 0 else len(text)].rstrip("\n").splitlines()
    section = section_of(text)
    # one row more in the table (which is made, with its heading, where RESULTS.md has none yet)
    def rows(section):
        return [line for line in section if line.startswith("| ") and not line.startswith(("| date |", "| --- |"))]
    assert len(rows(section)) == len(rows(section_of(before))) + 1
    header = next(line for line in section if line.startswith("| date |"))
    header, cells = ([cell.strip() for cell in line.strip().strip("|").split("|")] for line in (header, section[-1]))
    assert header == [title for title, _ in table.columns]
    assert cells[-1] == f"`{result['command']}`"
    return header, cells


@needs_torch
def test_gpt2_train_appends_one_row_to_its_table(gpt2_result, tmp_path, monkeypatch):
    r, _ = gpt2_result
    header, cells = _recorded_row(gpt2_train.TABLE, r, tmp_path, monkeypatch)
    assert len(cells) == len(header)
    assert cells[1] == "gpt2_tiny B=2 T=16 V=256 float32"
    assert cells[2].startswith(f"cpu ({r['cpu']}), {r['cores']} cores, load ")
    assert any(c.startswith("jax ") and "transformers" in c for c in cells)


@needs_torch
def test_bert_mlm_and_generate_report_and_record(tmp_path, monkeypatch):
    bert = bert_mlm.main(["--config", "bert_tiny", "--batch", "2", "--seq-len", "16", "--predictions", "3", *FAST,
                          *TINY, "--config.model.d_ff=64"], prog="python -m bench bert-mlm")
    assert bert["flax_lm"]["sequences_per_sec"] > 0 and bert["torch_eager"]["tokens_per_sec"] > 0
    assert bert["flax_lm"]["mfu_llmc"] is None and bert["flops_per_token"]["llmc"] > 0  # no peak on CPU
    header, cells = _recorded_row(bert_mlm.TABLE, bert, tmp_path, monkeypatch)
    assert len(cells) == len(header) and cells[1] == "bert_tiny B=2 T=16 P=3 float32"

    decoding = gpt2_generate.main(["--config", "gpt2_tiny", "--batch", "2", "--seq-len", "4", "--new", "3", *FAST,
                                   *TINY], prog="python -m bench generate")
    assert re.fullmatch(r"[0-2]/2", decoding["rows_token_equal"])  # parity is test_generation's
    assert decoding["flax_lm"]["tokens_per_sec"] == pytest.approx(2 * 3 / decoding["flax_lm"]["step_time_s"]["median"])
    assert decoding["prepare_ms"] > 0
    header, cells = _recorded_row(gpt2_generate.TABLE, decoding, tmp_path / "generate", monkeypatch)
    assert len(cells) == len(header)


def test_an_unknown_benchmark_or_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        bench_main.main(["gpt3-train"])
    assert e.value.code == 2 and "invalid choice: 'gpt3-train'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        bench_main.main(["gpt2-train", "--batchsize", "4"])
    assert e.value.code == 2 and "unrecognized arguments: --batchsize" in capsys.readouterr().err


def test_the_cpu_is_named_so_that_figures_from_different_machines_are_told_apart():
    intel = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n" \
            "model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\nprocessor\t: 1\n"
    assert harness.cpu_model(intel) == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    # a virtual machine's bare name says nothing of the generation: its family and model numbers do
    amd = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
    assert harness.cpu_model(amd) == "AMD EPYC (family 25, model 17)"
    assert harness.cpu_model("") == (platform.processor() or platform.machine())


def test_a_ratio_measured_while_other_jobs_shared_the_cores_says_so():
    r = {"platform": "cpu", "cores": 2, "load_average": 3.6, "speedup_vs_torch_eager": 1.5}
    assert harness.speedup(r, "speedup_vs_torch_eager") == "**1.50x** (cores shared: not comparable)"
    r["load_average"] = 2.1  # the run's own two threads
    assert harness.speedup(r, "speedup_vs_torch_eager") == "**1.50x**"


def _gpu_script(tmp_path, *steps, env=()):
    """bench/gpu.sh with a stand-in python3 that echoes each step's command and platforms (and
    sleeps $FAKE_SLEEP s), so nothing here needs a GPU -> (exit status, the steps it ran, the
    files it sent back in $OUT, unpacked)."""
    fake, out, unpacked = tmp_path / "bin", tmp_path / "out", tmp_path / "unpacked"
    fake.mkdir(exist_ok=True)
    (fake / "python3").write_text('#!/bin/bash\necho "ran: $* on platforms=$JAX_PLATFORMS"\nsleep ${FAKE_SLEEP:-0}\n')
    (fake / "python3").chmod(0o755)
    script = Path(__file__).parent.parent / "bench" / "gpu.sh"
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "OUT": str(out), "RUN_DIR": str(tmp_path / "run"),
           **dict(env)}
    done = subprocess.run(["bash", str(script), *steps], env=env, capture_output=True, text=True,
                          cwd=script.parent.parent)
    unpacked.mkdir(exist_ok=True)
    if (out / "results.tgz").exists():
        with tarfile.open(out / "results.tgz") as tar:
            tar.extractall(unpacked, filter="data")
    ran = [line.split(":")[0][3:] for line in done.stdout.splitlines() if line.startswith("== ")]
    return done.returncode, ran, out, unpacked


def test_gpu_script_runs_only_the_steps_named_so_they_can_be_split_over_calls(tmp_path):
    # a lent GPU machine runs one command for at most 10 minutes, and the whole script takes about 20;
    # the steps run in the script's order, the training target first
    assert _gpu_script(tmp_path, "generate_b256", "checks")[:2] == (0, ["checks", "generate_b256"])
    rc, ran, _, _ = _gpu_script(tmp_path)
    assert rc == 0 and ran[0] == "gpt2_small_train" and len(ran) == 7
    rc, ran, _, _ = _gpu_script(tmp_path, "generate_b2")
    assert rc == 2 and ran == []


def test_gpu_script_runs_the_gpu_checks_on_the_gpu_and_sends_back_one_packed_file(tmp_path):
    """The suite's conftest picks the CPU where JAX_PLATFORMS is unset (here it is cpu, as there);
    a lent machine sends back at most 8 files, so the logs and results come packed."""
    rc, ran, out, unpacked = _gpu_script(tmp_path, "checks", "generate_b1")
    assert rc == 0 and ran == ["checks", "generate_b1"]
    assert [p.name for p in out.iterdir()] == ["results.tgz"]
    assert "tests/test_gpu.py on platforms=cuda" in (unpacked / "checks.log").read_text()
    assert "--dtype bfloat16" in (unpacked / "generate_b1.log").read_text()
    assert {"summary.log", "RESULTS.md", "gpu.txt"} <= {p.name for p in unpacked.iterdir()}


def test_a_gpu_step_that_runs_too_long_is_stopped_and_the_next_one_runs(tmp_path):
    rc, ran, _, unpacked = _gpu_script(tmp_path, "checks", "generate_b1", env={"STEP_TIMEOUT": "1", "FAKE_SLEEP": "5"})
    assert rc == 1 and ran == ["checks", "generate_b1"]
    assert (unpacked / "summary.log").read_text().count("TIMED OUT after 1 s") == 2


@pytest.mark.parametrize("guess", [None, 8, 72, 80, 200, 4096])
def test_largest_batch_search_finds_the_last_batch_that_fits_from_any_guess(guess):
    tried = []

    def fits(b):
        tried.append(b)
        return b <= 77
    assert max_batch.largest(fits, 8, 1000, guess=guess) == 72
    assert all(b % 8 == 0 and 8 <= b <= 1000 for b in tried) and len(tried) <= 16  # 2 log2(1000 / 8) + 2
    if guess == 72:
        assert tried == [72, 80]  # a right guess costs two steps
    assert max_batch.largest(lambda b: True, 8, 100, guess=guess) == 96  # capped by the limit
    assert max_batch.largest(lambda b: False, 8, 100, guess=guess) == 0


@needs_torch
def test_max_batch_on_cpu_is_judged_by_the_memory_analysis_against_the_budget(tmp_path, monkeypatch, capsys):
    path = tmp_path / "max.json"
    argv = ["max-batch", "--config", "gpt2_tiny", "--seq-len", "16", "--memory-gib", "0.01", "--multiple", "4",
            "--limit", "256", "--remat", "none", "--json", str(path), "--no-record", *TINY]
    r = bench_main.main(argv)
    assert r == json.loads(path.read_text()) and r["judged_by"] == "XLA memory analysis"
    assert r["torch_eager"] is None and r["ratio"] is None  # PyTorch has no limit to meet on a CPU
    found = r["flax_lm"]["none"]["batch"]

    def analysed(b):
        cfg = config_lib.load("gpt2_tiny", TINY + [
            "--config.model.dtype=bfloat16", "--config.model.dropout=0.0", "--config.model.attention_dropout=0.0",
            "--config.train.grad_accum_steps=1", f"--config.train.batch_size={b}", "--config.model.max_len=16"])
        cfg.parallel.update(data=1, fsdp=1, tensor=1)
        return tpu_compile.compile_train_step(cfg, jax.devices()[:1])["per_chip_total_bytes"]
    assert found % 4 == 0 and analysed(found) <= r["memory_limit_bytes"] < analysed(found + 4)
    header, cells = _recorded_row(max_batch.TABLE, r, tmp_path, monkeypatch)
    assert len(cells) == len(header) and cells[4] == f"none: {found}" and cells[5] == "-"
    with pytest.raises(SystemExit) as e:  # a CPU has no limit of its own
        bench_main.main(["max-batch", "--no-record", *TINY])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        bench_main.main(["max-batch", "--no-record", "--memory-gib", "1", "--remat", "none,everything", *TINY])
    assert e.value.code == 2 and "model.remat_policy must be one of" in capsys.readouterr().err
