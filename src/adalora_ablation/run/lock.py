"""One writer per run folder: a lock file that works on the network filesystems clusters use.

``flock`` is not enough on a cluster: it is per host on many NFS setups, and a requeued Slurm job may start on
another node while the old one still runs. So the lock is a file created with O_CREAT | O_EXCL (atomic on NFSv3+
and every local filesystem) that names its owner (host, PID, start time) and carries a heartbeat: the owner touches
it every ``HEARTBEAT_S`` seconds. A lock is taken over only when its owner is provably gone (same host, PID not
running) or its heartbeat is older than ``STALE_S`` (a crashed node cannot touch it any more).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "run.lock"
HEARTBEAT_S = 30.0
STALE_S = 600.0  # 20 missed heartbeats: longer than any pause a live process (or a busy NFS server) makes


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    started: float  # time.time() when the lock was taken
    token: str  # unique per acquisition: tells our lock from a later one by the same PID

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"process {self.pid} on {self.host} (since {since})"


def read_owner(path: Path) -> tuple[LockOwner, float] | None:
    """The lock's owner and its heartbeat age in seconds, or None if there is no (readable) lock."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        age = time.time() - Path(path).stat().st_mtime
        return LockOwner(data["host"], int(data["pid"]), float(data["started"]), data["token"]), age
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def gone_reason(owner: LockOwner, age: float) -> str | None:
    """Why the owner is provably gone (so the lock may be taken over), or None while it may still be alive."""
    if owner.host == socket.gethostname() and not _pid_running(owner.pid):
        return f"{owner.describe()} is no longer running"
    if age > STALE_S:
        return f"{owner.describe()} has not renewed its heartbeat for {age:.0f} s"
    return None


def held_elsewhere(run_dir: Path) -> LockOwner | None:
    """The live owner of a run folder's lock, if another process holds it (ablate shows such runs as running)."""
    found = read_owner(Path(run_dir) / LOCK_FILE)
    if found is None or gone_reason(*found) is not None:
        return None
    return found[0]


class LockHeld(Exception):
    """The run folder is held by a live process (the message names it)."""


class RunLock:
    """Exclusive ownership of a run folder for the life of a process; use as a context manager.

    ``acquire`` creates the folder if needed, takes the lock (taking over a dead owner's lock with a message) or
    raises LockHeld. While held, a daemon thread renews the heartbeat. ``release`` removes the lock if it is still
    ours.
    """

    def __init__(self, run_dir: Path, log=print):
        self.path = Path(run_dir) / LOCK_FILE
        self.log = log
        self.owner: LockOwner | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner = LockOwner(socket.gethostname(), os.getpid(), time.time(), os.urandom(8).hex())
        for _ in range(3):  # a takeover can race with another process doing the same: retry a few times
            if self._create(owner):
                self.owner = owner
                self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
                self._thread.start()
                return self
            found = read_owner(self.path)
            if found is None:  # unreadable: being written right now, or torn by a crash; give it a moment
                time.sleep(0.2)
                found = read_owner(self.path)
                if found is None and self.path.exists():
                    age = time.time() - self.path.stat().st_mtime
                    if age <= STALE_S:
                        raise LockHeld(f"{self.path.parent} is locked ({self.path} exists but cannot be read)")
                    self._take_over(None, f"the unreadable lock is {age:.0f} s old")
                continue
            reason = gone_reason(*found)
            if reason is None:
                raise LockHeld(f"{self.path.parent} is in use by {found[0].describe()}; wait for it to finish or "
                               f"stop it (its lock: {self.path})")
            self._take_over(found[0], reason)
        raise LockHeld(f"{self.path.parent} is being taken over by another process at the same time; try again")

    def _create(self, owner: LockOwner) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"host": owner.host, "pid": owner.pid, "started": owner.started, "token": owner.token}, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _take_over(self, stale: LockOwner | None, reason: str) -> None:
        """Move the dead owner's lock aside (rename is atomic: of two processes doing this, one wins) and check
        that what was moved is the lock judged dead, not a fresh one that a third process took meanwhile."""
        aside = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else moved it first; retry the create
        moved = read_owner(aside)
        if stale is not None and (moved is None or moved[0] != stale):
            try:  # it was a live lock: put it back
                os.link(aside, self.path)
            finally:
                aside.unlink(missing_ok=True)
            raise LockHeld(f"{self.path.parent} was just taken by another process; try again")
        aside.unlink(missing_ok=True)
        self.log(f"[run] taking over the lock of {self.path.parent}: {reason}")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a transient filesystem error; the next beat tries again

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        found = read_owner(self.path)
        if self.owner is not None and found is not None and found[0] == self.owner:
            self.path.unlink(missing_ok=True)
        self.owner = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
