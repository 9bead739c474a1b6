"""One writer per workdir: the lease `train` holds on its workdir for its lifetime.

The lease is a file, WORKDIR/writer.lock, naming its holder (host, pid, since when) and
rewritten every `stale_seconds / 4` by a heartbeat thread. A holder is alive while
- its flock on the file is held (local disks, NFS with working locks: the kernel drops it
  when the process dies, even by kill -9), or
- on its own host, its pid runs (a dead pid frees the lease at once, where flock does not hold), or
- on another host, its heartbeat is newer than `stale_seconds` (gcsfuse, NFS without locks: a
  lease whose heartbeat stopped is taken over, with a one-line note).
Readers (evaluate, predict, generate, export) never look at it.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from flax_lm.errors import UserError

LEASE = "writer.lock"


class Lease:
    """The held lease of one workdir; `release()` (or the process's end) frees it."""

    def __init__(self, workdir: Path, stale_seconds: float):
        self.path = Path(workdir) / LEASE
        self.stale_seconds = stale_seconds
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                       "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        self._file = None
        self._stop = threading.Event()
        self._heartbeat = None
        self._made = False

    def acquire(self, note) -> None:
        """Takes the lease, or raises a UserError naming its live holder. A stale or dead
        holder's lease is taken over; a stale one is reported through `note(line)`."""
        # a new workdir made here goes again on release if the run left nothing in it (a new run
        # that failed before its first step takes back what it wrote: fresh_workdir)
        self._made = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:  # a file system without flock (ENOLCK, EOPNOTSUPP): the record decides
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self._refuse(read_holder(self.path))
        current = read_holder(self.path)
        if current and current.get("token") != self.holder["token"]:
            self._check_takeover(current, note)
        self._write()
        if (read_holder(self.path) or {}).get("token") != self.holder["token"]:  # another starter won the race
            self._refuse(read_holder(self.path))
        self._heartbeat = threading.Thread(target=self._beat, name="workdir lease heartbeat", daemon=True)
        self._heartbeat.start()

    def _check_takeover(self, current: dict, note) -> None:
        age = time.time() - float(current.get("heartbeat", 0))
        if current.get("host") == self.holder["host"]:
            if _pid_runs(int(current.get("pid", 0))) and int(current.get("pid", 0)) != os.getpid():
                self._refuse(current)
            return  # its process is gone: the lease died with it
        if age <= self.stale_seconds:
            self._refuse(current)
        note(f"took over the workdir lock of {describe(current)}: no heartbeat for {age:.0f} s "
             f"(more than train.lock_stale_seconds={self.stale_seconds:g})")

    def _refuse(self, current: dict | None) -> None:
        self._close_file()
        holder = describe(current) if current else "another process (its lease file is being written)"
        raise UserError(f"--workdir {self.path.parent} is in use by a running train: {holder}; "
                        f"wait for it to end, or give another --workdir")

    def _write(self) -> None:
        record = {**self.holder, "heartbeat": time.time()}
        partial = self.path.with_name(f"{LEASE}.{self.holder['token']}.partial")
        partial.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(partial, self.path)
        # the rename replaced the file this process holds flock on: hold it on the new one
        previous, self._file = self._file, open(self.path, "a+", encoding="utf-8")
        with contextlib.suppress(OSError):
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if previous:
            previous.close()

    def _beat(self) -> None:
        while not self._stop.wait(self.stale_seconds / 4):
            if (read_holder(self.path) or {}).get("token") != self.holder["token"]:
                return  # taken over (this process looked dead): the new holder's lease is not ours to write
            with contextlib.suppress(OSError):
                self._write()

    def release(self) -> None:
        """Stops the heartbeat and removes the lease, if it is still this process's."""
        self._stop.set()
        if self._heartbeat:
            self._heartbeat.join()
        with contextlib.suppress(OSError):
            if (read_holder(self.path) or {}).get("token") == self.holder["token"]:
                self.path.unlink()
        self._close_file()
        if self._made:
            with contextlib.suppress(OSError):  # not empty: the run's files stay
                self.path.parent.rmdir()

    def _close_file(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


def read_holder(path: Path) -> dict | None:
    """The lease's record, or None when there is none (or it is half written)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe(holder: dict) -> str:
    """'host H, pid P, since T' of a lease record."""
    return f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')}"


def _pid_runs(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def held(workdir: Path, stale_seconds: float, note):
    """The workdir's lease for the body of the `with`, taken by process 0 of the run; a UserError
    on every process when another train holds it."""
    import jax
    from jax.experimental import multihost_utils
    lease, refusal = None, None
    if jax.process_index() == 0:
        lease = Lease(workdir, stale_seconds)
        try:
            lease.acquire(note)
        except UserError as e:
            lease, refusal = None, e
    if jax.process_count() > 1:  # the others learn whether process 0 holds it
        refused = bool(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
        if refused and refusal is None:
            refusal = UserError(f"--workdir {workdir} is in use by a running train (process 0 names it)")
    if refusal is not None:
        raise refusal
    try:
        yield lease
    finally:
        if lease:
            lease.release()
