"""Stopping cleanly when the machine asks: SIGTERM (a preempted TPU VM, a cluster scheduler)
or SIGINT (Ctrl-C) lets the current step finish, then the loop saves and exits.

One process: our own handlers set a flag that the loop reads between steps. Several
processes: every one must stop at the same step, or the collective save would hang, so the
decision is Orbax's preemption sync point (JAX's coordination service hears the signal and
all processes agree on the step).
"""

import signal
import threading

import jax

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """A context manager; `requested(step)` says whether to stop after `step`."""

    def __init__(self, checkpoint_manager):
        self.manager = checkpoint_manager
        self.received = None  # the name of the first signal
        self.previous = {}

    def __enter__(self) -> "StopRequests":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the save
        self.received = signal.Signals(signum).name

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1 and self.manager.reached_preemption(step):
            self.received = "preemption"
        return self.received is not None
