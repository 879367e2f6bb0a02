"""One training process per run directory: ``<run dir>/.lock``.

The lock file is created exclusively (``O_CREAT | O_EXCL``) by global rank 0 and holds its host, PID, the PID's
start time, the SLURM job id and the command line; a thread refreshes its modification time every
``HEARTBEAT_S`` seconds while the run lives. A second run into the same directory is refused in one line naming the
holder. A lock left by a dead run is taken over (with a warning) when:

- it was taken on this host and its PID is gone (or now belongs to a newer process: PIDs are reused), or
- it names this process's SLURM job id (a requeued job: SLURM ran the earlier incarnation to its end), or
- its heartbeat is older than ``STALE_AFTER_S`` (a run on another host that died without removing it).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from selfsup.runtime.preemption import slurm_job_id

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class RunDirBusy(ValueError):
    """Another live run holds the directory."""


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), to tell a reused PID from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after the command name


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    return start is None or _process_start(pid) in (None, start)


class RunLock:
    """The lock on ``run_dir`` (see the module docstring); a context manager.

    Args:
        run_dir: the run directory.
        key: the config key named in messages.
    """

    def __init__(self, run_dir: str | os.PathLike, key: str = "hydra.run.dir"):
        self.run_dir, self.key = Path(run_dir), key
        self.path = self.run_dir / LOCK_NAME
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": _process_start(os.getpid()),
            "slurm_job": slurm_job_id(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": sys.argv,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                why = self._stale(holder)
                if why is None:
                    raise RunDirBusy(self._busy_message(holder)) from None
                log.warning("%s: taking over the lock of a dead run (%s)", self.run_dir, why)
                self.path.unlink(missing_ok=True)  # another taker racing us gets O_EXCL's answer on the retry
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            self._start_heartbeat()
            return
        raise RunDirBusy(f"{self.key}={self.run_dir}: could not take {self.path} (another run is starting there)")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        holder = self._holder()
        if holder.get("pid") == self.me["pid"] and holder.get("host") == self.me["host"]:
            self.path.unlink(missing_ok=True)

    # -- internals ---------------------------------------------------------------------------------------------
    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}  # unreadable (a half-written lock of a killed run): judged by its age below

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return float("inf")

    def _stale(self, holder: dict) -> str | None:
        """Why the lock's holder is known to be dead, or None while it may be alive."""
        pid = holder.get("pid")
        if holder.get("host") == self.me["host"] and isinstance(pid, int):
            return None if _alive(pid, holder.get("start")) else f"pid {pid} on this host is gone"
        if holder.get("slurm_job") and holder.get("slurm_job") == self.me["slurm_job"]:
            return f"the earlier run of SLURM job {holder['slurm_job']}"
        if self._age() > STALE_AFTER_S:
            return f"no heartbeat for {self._age():.0f} s"
        return None

    def _busy_message(self, holder: dict) -> str:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        if holder.get("slurm_job"):
            who += f" (SLURM job {holder['slurm_job']})"
        return (
            f"{self.key}={self.run_dir}: in use by {who} since {holder.get('since', '?')} (heartbeat "
            f"{self._age():.0f} s ago): wait for it to end or choose another {self.key}; if that run is dead, "
            f"delete {self.path}"
        )

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="selfsup-run-lock", daemon=True)
        self._thread.start()
