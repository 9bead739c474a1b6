"""`train.profile_steps`: a JAX profiler trace of a window of steps in WORKDIR/profile, for TensorBoard."""

import jax
import pytest
from conftest import tiny_config

from flax_lm import cli
from flax_lm.training import profiling, train


def test_a_profiled_run_writes_a_trace_that_tensorboard_reads(tmp_path, shakespeare, capsys):
    cfg = tiny_config(train=dict(steps=4, eval_every=4, checkpoint_every=4, profile_steps="1:3"))
    train.train(cfg, tmp_path)
    # TensorBoard's profile plugin reads LOGDIR/plugins/profile/RUN/HOST.xplane.pb
    traces = list((tmp_path / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and b"/host:CPU" in traces[0].read_bytes()  # an XSpace with the host's plane
    assert f"profile of steps 1..2 in {tmp_path / 'profile'}" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["3:3", "5:2", "-1:2", "7", "a:b", "1:2:3", "1:9" + "9" * 30])
def test_a_bad_window_is_one_line_and_exit_2(tmp_path, capsys, value):
    code = cli.main(["train", "--config", "gpt2_tiny", "--workdir", str(tmp_path / "run"),
                     f"--config.train.profile_steps={value}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "error: train.profile_steps must be START:STOP with 0 <= START < STOP, got '" in err
    assert not (tmp_path / "run").exists()


def test_the_window_parses():
    assert profiling.parse_steps("") is None
    assert profiling.parse_steps("10:15") == (10, 15)
    assert profiling.parse_steps(" 0:1 ") == (0, 1)


@pytest.fixture
def trace_calls(monkeypatch):
    """The profiler's start/stop calls, recorded instead of made."""
    calls = []
    monkeypatch.setattr(jax.profiler, "start_trace", lambda path: calls.append(("start", path)))
    monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append(("stop",)))
    return calls


def _run(profiler, steps, fail_at=None):
    with profiler:
        for step in steps:
            profiler.before_step(step)
            if step == fail_at:
                raise RuntimeError("the step failed")
            profiler.after_step(step, {"loss": jax.numpy.zeros(())})


def test_a_resumed_run_traces_the_rest_of_the_window(tmp_path, trace_calls):
    _run(profiling.StepProfiler("1:4", tmp_path), range(2, 8))  # resumed at step 2
    assert trace_calls == [("start", str(tmp_path / "profile")), ("stop",)]


def test_a_loop_that_ends_or_fails_inside_the_window_still_writes_its_trace(tmp_path, trace_calls):
    _run(profiling.StepProfiler("1:10", tmp_path), range(0, 3))
    assert trace_calls == [("start", str(tmp_path / "profile")), ("stop",)]
    with pytest.raises(RuntimeError, match="the step failed"):
        _run(profiling.StepProfiler("1:10", tmp_path), range(0, 5), fail_at=3)
    assert trace_calls[2:] == [("start", str(tmp_path / "profile")), ("stop",)]


def test_only_the_first_process_traces_and_a_window_the_run_skips_traces_nothing(tmp_path, trace_calls):
    _run(profiling.StepProfiler("1:3", tmp_path, enabled=False), range(0, 5))
    _run(profiling.StepProfiler("1:3", tmp_path), range(3, 5))
    _run(profiling.StepProfiler("", tmp_path), range(0, 5))
    assert trace_calls == []
