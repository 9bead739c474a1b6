"""A lost process ends a multi-process run instead of hanging it.

When one process of a run dies (a preempted worker, an OOM kill), the others fail in their next
collective or, as often, block in it or in a checkpoint barrier for good. Either way they end
with one line naming the lost process (the coordination service knows which processes live)
and `os._exit(LOST_PROCESS)`: a blocked collective never returns, and JAX's own shutdown would
wait for the dead peer at its barrier.
- `Watchdog`: no step, evaluation or save completed for `train.watchdog_seconds`;
- `end_run_if_lost`: an error in the loop came with a process of the run gone.
JAX runs its coordination service in recoverable mode (parallel.distributed), so that a lost
process is this module's to report; when process 0, which runs the service, is lost, JAX itself
aborts the others at once.
"""

import os
import sys
import threading
import time

import jax

LOST_PROCESS = 4  # the exit status of a process whose run lost another process
ASK_SECONDS = 10.0  # how long to wait for the coordination service to say who is alive


class Watchdog:
    """Ends this process when `progress()` is not called for `seconds` (0: never) once it has
    been called: the first step's data preparation and compilation, which may take longer than
    any later step on a pod, are not timed (a process lost before then is JAX's heartbeat's)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._last = None
        self._stop = threading.Event()

    def __enter__(self):
        if self.seconds > 0:
            threading.Thread(target=self._watch, name="flax_lm watchdog", daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        return False

    def progress(self) -> None:
        """A step, an evaluation or a save completed: the run still moves."""
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.seconds / 4)):
            if self._last is None:
                continue
            idle = time.monotonic() - self._last
            if idle > self.seconds:
                end_run(lost_processes(ASK_SECONDS),
                        f"no step, evaluation or save completed for {idle:.0f} s "
                        f"(train.watchdog_seconds={self.seconds:g})")


def heartbeat_for(watchdog_seconds: float) -> int:
    """JAX's heartbeat timeout in seconds for a run whose watchdog waits `watchdog_seconds` (0: off,
    JAX's default of 100): half of it, so that a process that stopped without closing its
    connection (a frozen host, a network partition) is no longer counted alive by the time the
    watchdog asks."""
    return max(2, int(watchdog_seconds // 2)) if watchdog_seconds > 0 else 100


def lost_processes(timeout_seconds: float) -> list[int] | None:
    """The processes of this run the coordination service no longer counts as alive ([] when it
    counts all, or gives no answer within `timeout_seconds`); None when it cannot be reached
    (process 0, which runs the service, is the one gone). The service answers once every live
    process has asked (JAX's GetAliveTasks is a barrier), so every process that is to name the
    lost ones asks at about the same time: when its steps stop, or an error ends them."""
    from jax._src import distributed  # private: the client jax.distributed.initialize made
    client = distributed.global_state.client
    everyone = list(range(jax.process_count()))
    answer: dict = {}

    def ask():
        try:
            answer["live"] = set(client.get_live_nodes(everyone))
        except Exception:  # the coordination service is unreachable
            answer["live"] = None

    asking = threading.Thread(target=ask, name="flax_lm live processes", daemon=True)
    asking.start()
    asking.join(timeout_seconds)
    if "live" not in answer:
        return []
    live = answer["live"]
    return None if live is None else [p for p in everyone if p not in live]


def end_run_if_lost(error: BaseException, timeout_seconds: float = ASK_SECONDS) -> None:
    """Ends the run as `end_run` does when `error` came with a process of the run gone (a killed
    process's connection closes, so the service knows at once); returns, for the caller to
    re-raise, when every process is still alive: then the error is this process's own."""
    lost = lost_processes(timeout_seconds)
    if lost == []:
        return
    end_run(lost, (str(error).strip().splitlines() or [type(error).__name__])[0][:200])


_ending = threading.Lock()


def end_run(lost: list[int] | None, reason: str) -> None:
    """Prints the one line naming the `lost` processes (None: process 0, whose coordination
    service answers no more; []: none known) and exits with LOST_PROCESS, without JAX's shutdown
    barrier. The first caller wins; others (the watchdog, the callback) wait for it to exit."""
    _ending.acquire()
    me, count = jax.process_index(), jax.process_count()
    if lost is None:
        who = "process 0 (the coordinator) was lost" if me != 0 else "the coordination service is gone"
    elif lost:
        who = f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of {count} " \
              f"{'were' if len(lost) > 1 else 'was'} lost"
    else:
        who = "a process of the run stopped answering"
    sys.stdout.flush()
    print(f"flax-lm train: error: process {me} of {count}: {who} ({reason}); the run ends; rerun every "
          f"process with the same command to resume from the last complete checkpoint", file=sys.stderr, flush=True)
    os._exit(LOST_PROCESS)
