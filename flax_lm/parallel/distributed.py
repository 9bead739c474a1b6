"""Joining a multi-process (multi-host) run: `jax.distributed.initialize` before JAX starts.

Where the processes come from, first match wins:
1. `flax-lm train --coordinator HOST:PORT --num-processes N --process-id I`;
2. the environment: FLAX_LM_COORDINATOR, FLAX_LM_NUM_PROCESSES, FLAX_LM_PROCESS_ID;
3. a machine whose workers JAX finds itself (`backends.self_discovering_cluster`): there the
   same `flax-lm train` command runs unchanged on every worker;
4. otherwise one process, and nothing is initialised.

Every process then sees all devices of all processes (`jax.devices()`) and its own
(`jax.local_devices()`); process 0 alone writes the workdir's config, tokenizer and logs.

The coordination service counts a process whose heartbeat stopped `heartbeat_seconds` ago as
lost; training.watchdog ends a run that stalls, naming the lost process.
"""

import os

import jax

from flax_lm import backends
from flax_lm.errors import UserError

ENV_COORDINATOR = "FLAX_LM_COORDINATOR"      # HOST:PORT of process 0's coordination service
ENV_NUM_PROCESSES = "FLAX_LM_NUM_PROCESSES"
ENV_PROCESS_ID = "FLAX_LM_PROCESS_ID"        # 0 .. N-1; process 0 runs the coordinator


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               environ=os.environ, heartbeat_seconds: int = 100) -> str | None:
    """Initialises JAX's distributed runtime from the flags (or `environ`, or a self-discovering
    cluster); returns what it joined, for a log line, or None for a single process. Call before
    any JAX computation. The coordination service counts a process whose heartbeat stopped
    `heartbeat_seconds` ago as lost."""
    settings = dict(heartbeat_timeout_seconds=heartbeat_seconds)
    explicit = _explicit_settings(coordinator, num_processes, process_id, environ)
    if explicit is not None:
        coordinator, num_processes, process_id = explicit
        backends.before_explicit_cluster()
        _call_initialize(f"--coordinator {coordinator}", coordinator_address=coordinator,
                         num_processes=num_processes, process_id=process_id, **settings)
        return f"process {process_id} of {num_processes} (coordinator {coordinator})"
    cluster = backends.self_discovering_cluster()
    if cluster:
        _call_initialize(f"on this {cluster}", **settings)  # JAX finds the workers' addresses
        return f"{cluster} worker {jax.process_index()} of {jax.process_count()}"
    return None


def _explicit_settings(coordinator, num_processes, process_id, environ) -> tuple[str, int, int] | None:
    """(coordinator, N, I) from the flags, else the environment, else None; half a set is a UserError."""
    flags = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if all(v is None for v in flags.values()):
        names = {"--coordinator": ENV_COORDINATOR, "--num-processes": ENV_NUM_PROCESSES,
                 "--process-id": ENV_PROCESS_ID}
        flags = {names[k]: environ.get(names[k]) or None for k in flags}
        if all(v is None for v in flags.values()):
            return None
    missing = [name for name, value in flags.items() if value is None]
    if missing:
        raise UserError(f"a multi-process run needs {', '.join(flags)} together; {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} missing")
    (coord_name, address), (n_name, n), (i_name, i) = flags.items()
    n, i = _integer(n_name, n), _integer(i_name, i)
    host, _, port = str(address).rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"{coord_name} {address!r}: give the coordinator as HOST:PORT (process 0's address)")
    if n < 1:
        raise UserError(f"{n_name} must be at least 1; got {n}")
    if not 0 <= i < n:
        raise UserError(f"{i_name} must be in 0..{n - 1} for {n} processes; got {i}")
    return str(address), n, i


def _integer(name: str, value) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name} must be an integer; got {value!r}") from None


def _call_initialize(where: str, **kwargs) -> None:
    # Recoverable: the coordination service then leaves a lost process to the others to notice
    # (their next collective fails, or training.watchdog sees no progress) instead of aborting them
    # all with SIGABRT and a C++ stack trace within the heartbeat timeout. Process 0 runs the
    # service: when it is lost, JAX's client still aborts the others at once (its callback for that
    # takes an absl::Status, which jaxlib cannot pass to Python).
    jax.config.update("jax_enable_recoverability", True)
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:  # e.g. the coordinator never answered, or JAX was already started
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"jax.distributed.initialize ({where}) failed: {reason}") from None


def leave_together(timeout_seconds: float = 300.0) -> None:
    """Ends this process's part in a multi-process run that finished: every process waits for the
    others, the others disconnect, and process 0, whose coordination service they disconnect from,
    waits until they have before it exits. JAX's own shutdown barrier does this, but it skips the
    recoverable processes that `initialize` makes, and a process whose service went first aborts
    with a C++ stack trace. No-op for one process."""
    from jax._src import distributed as jax_distributed  # private: the client initialize made
    client = jax_distributed.global_state.client
    if client is None or jax.process_count() == 1:
        return
    client.wait_at_barrier("flax_lm_leave", int(timeout_seconds * 1000))
    if jax.process_index() != 0:
        jax.distributed.shutdown()
        return
    # the service answers once every live process has asked or left: here, once the others left
    everyone = list(range(jax.process_count()))
    client.get_live_nodes(everyone)
    jax.distributed.shutdown()
