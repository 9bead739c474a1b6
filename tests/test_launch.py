"""The launch scripts, run with --dry-run: the commands they would run, one a line."""

import os
import shlex
import subprocess
import sys

from conftest import ROOT

TRAIN = ["--config", "gpt2_small", "--workdir", "/mnt/bucket/run", "--config.sample.prompt=def f(x):"]


def _plan(script: str, *args: str) -> list[list[str]]:
    done = subprocess.run(["bash", str(ROOT / "launch" / script), "--dry-run", *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines()]


def _flag(argv: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.startswith(name + "="))


def test_tpu_vm_creates_installs_trains_on_every_worker_and_deletes():
    plan = _plan("tpu_vm.sh", "--name", "lm", "--zone", "us-west4-a", "--type", "v5litepod-16", "--delete",
                 "--", *TRAIN)
    gcloud = [argv for argv in plan if argv[0] == "gcloud"]
    verbs = [argv[3:5] for argv in gcloud]
    assert verbs == [["tpu-vm", "describe"], ["tpu-vm", "create"], ["tpu-vm", "scp"], ["tpu-vm", "ssh"],
                     ["tpu-vm", "ssh"], ["tpu-vm", "delete"]]
    describe, create, scp, install, run, delete = gcloud
    assert all(argv[5] == "lm" and "--zone=us-west4-a" in argv for argv in (describe, create, install, run, delete))
    assert (_flag(create, "--accelerator-type"), _flag(create, "--version")) == ("v5litepod-16", "v2-alpha-tpuv5-lite")
    # the checkout, packed here, goes to every worker and is installed there with the tpu extra
    pack = next(" ".join(argv) for argv in plan if argv[0] == "git")
    package = scp[5]
    assert "ls-files" in pack and package in pack and package.endswith(".tgz")
    assert scp[6] == "lm:flax_lm.tgz" and "--worker=all" in scp
    assert "--worker=all" in install and 'pip install -q -e "$HOME/flax_lm[tpu]"' in _flag(install, "--command")
    # the same train command on all workers, its arguments quoted for the remote shell
    assert "--worker=all" in run
    remote = shlex.split(_flag(run, "--command").split("2>&1")[0].split("&&", 1)[1])
    assert remote == ["python3", "-m", "flax_lm.cli", "train", *TRAIN]
    assert "--quiet" in delete


def test_tpu_vm_queued_resource_from_git_and_delete_only():
    plan = _plan("tpu_vm.sh", "--name", "lm", "--zone", "z", "--type", "v6e-16", "--queued", "--spot",
                 "--project", "p", "--git", "https://example.com/flax_lm.git", "--git-ref", "v1", "--", *TRAIN)
    create = next(argv for argv in plan if argv[3:5] == ["queued-resources", "create"])
    assert (_flag(create, "--node-id"), _flag(create, "--runtime-version")) == ("lm", "v2-alpha-tpuv6e")
    assert "--spot" in create and all("--project=p" in argv for argv in plan)
    install = _flag(plan[-2], "--command")
    assert "git clone -q https://example.com/flax_lm.git" in install and "checkout -q v1" in install
    assert not any(argv[3:5] == ["tpu-vm", "scp"] for argv in plan)
    assert _plan("tpu_vm.sh", "--name", "lm", "--zone", "z", "--delete", "--queued") == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "lm", "--force", "--quiet", "--zone=z"]]
    bad = subprocess.run(["bash", str(ROOT / "launch" / "tpu_vm.sh"), "--name", "lm", "--", *TRAIN],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--name and --zone are required" in bad.stderr


def test_gpu_local_sets_performance_flags_that_xla_accepts():
    plan = _plan("gpu_local.sh", "gpt2_small", "runs/x", "--config.model.dtype=bfloat16")
    env = dict(argv[1].split("=", 1) for argv in plan[:-1])
    assert plan[-1] == ["flax-lm", "train", "--config", "gpt2_small", "--workdir", "runs/x",
                        "--config.model.dtype=bfloat16"]
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true" and float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) >= 0.9
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in env["XLA_FLAGS"].split()
    # XLA parses every flag in XLA_FLAGS at start on any backend and aborts on an unknown one
    check = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
                           env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": env["XLA_FLAGS"]},
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
