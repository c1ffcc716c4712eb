"""One writer per run folder: a lock file that works on the network filesystems clusters use.

``flock`` is not enough on a cluster: it is per host on many NFS setups, and a requeued Slurm job may start on
another node while the old one still runs. So the lock is a file created with O_CREAT | O_EXCL (atomic on NFSv3+
and every local filesystem) that names its owner and carries a heartbeat: the owner touches it every
``HEARTBEAT_S`` seconds.

The owner is named by a random token (kept in the owning process) and, to judge whether it still runs, by the
kernel it runs on (its boot id), its PID namespace, its PID and that PID's start time. A host name and a PID are
not an identity: containers on one host (docker ``--network host``, Kubernetes ``hostNetwork``) share the host
name while each has its own PID numbers. A lock is taken over only when its owner is provably gone (same kernel
and PID namespace, and its PID is not running or now belongs to a later process) or its heartbeat is older than
``STALE_S`` measured on the filesystem's own clock (a client clock that runs ahead of the NFS server's must not
make live locks look stale).

An owner checks that the lock still names it (every heartbeat, and on ``check``): an owner that was suspended for
longer than ``STALE_S`` and taken over learns so and must stop writing (``LockLost``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LOCK_FILE = "run.lock"
HEARTBEAT_S = 30.0
STALE_S = 600.0  # 20 missed heartbeats: longer than any pause a live process (or a busy NFS server) makes


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_start(pid: int) -> str:
    """The PID's start time in clock ticks since boot ('' where /proc cannot tell): a reused PID has another one."""
    stat = _read_text(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split()[19] if stat else ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""  # no /proc (macOS, ...): no PID namespaces either


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    started: float  # time.time() when the lock was taken
    token: str  # random, unique per acquisition: the owner's identity; only the owning process knows it is its own
    boot_id: str = ""  # the kernel's boot id (shared by the containers on one machine); '' if unknown
    pid_ns: str = ""  # the PID namespace its PID is numbered in; '' if unknown
    pid_start: str = ""  # its PID's start time, to tell it from a later process given the same PID

    @classmethod
    def of_this_process(cls) -> LockOwner:
        return cls(socket.gethostname(), os.getpid(), time.time(), os.urandom(16).hex(),
                   _read_text("/proc/sys/kernel/random/boot_id"), _pid_namespace(), _pid_start(os.getpid()))

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"process {self.pid} on {self.host} (since {since})"


def read_owner(path: Path, now: float | None = None) -> tuple[LockOwner, float] | None:
    """The lock's owner and its heartbeat age in seconds (against ``now``, by default this host's clock), or None
    if there is no (readable) lock."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        age = (time.time() if now is None else now) - Path(path).stat().st_mtime
        owner = LockOwner(data["host"], int(data["pid"]), float(data["started"]), data["token"],
                          str(data.get("boot_id", "")), str(data.get("pid_ns", "")), str(data.get("pid_start", "")))
        return owner, age
    except (OSError, ValueError, KeyError, TypeError):
        return None


def filesystem_now(folder: Path) -> float:
    """The current time on the clock of the filesystem holding ``folder`` (an NFS server's, not this client's):
    the modification time of a file created there now. Heartbeat ages are measured against it."""
    probe = Path(folder) / f".clock.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError:
        return time.time()


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def gone_reason(owner: LockOwner, age: float) -> str | None:
    """Why the owner is provably gone (so the lock may be taken over), or None while it may still be alive.

    PIDs are compared only within one kernel and one PID namespace; anything else is judged by the heartbeat."""
    me = LockOwner.of_this_process()
    if owner.boot_id or me.boot_id:
        comparable = owner.boot_id == me.boot_id and owner.pid_ns == me.pid_ns
    else:  # neither side has /proc (macOS, ...), and so no PID namespaces: the host name tells
        comparable = owner.host == me.host
    if comparable:
        if owner.pid == me.pid:  # our own PID, but not our lock (we hold none yet): a dead predecessor's
            return f"{owner.describe()} is no longer running (this process has its PID now)"
        if not _pid_running(owner.pid):
            return f"{owner.describe()} is no longer running"
        if owner.pid_start and _pid_start(owner.pid) not in ("", owner.pid_start):
            return f"{owner.describe()} is no longer running (its PID belongs to a later process)"
    if age > STALE_S:
        return f"{owner.describe()} has not renewed its heartbeat for {age:.0f} s"
    return None


def held_elsewhere(run_dir: Path) -> LockOwner | None:
    """The live owner of a run folder's lock, if another process holds it (ablate shows such runs as running)."""
    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return None
    found = read_owner(path, filesystem_now(run_dir))
    if found is None or gone_reason(*found) is not None:
        return None
    return found[0]


class LockHeld(Exception):
    """The run folder is held by a live process (the message names it), or the lock cannot be written."""


class LockLost(Exception):
    """This process's lock was taken over (it was suspended or cut off for longer than STALE_S): stop writing."""


class RunLock:
    """Exclusive ownership of a run folder for the life of a process; use as a context manager.

    ``acquire`` creates the folder if needed, takes the lock (taking over a dead owner's lock with a message) or
    raises LockHeld. While held, a daemon thread renews the heartbeat and notices a takeover. ``check`` raises
    LockLost once the lock is no longer ours. ``release`` removes the lock if it is still ours.
    """

    def __init__(self, run_dir: Path, log=print):
        self.path = Path(run_dir) / LOCK_FILE
        self.log = log
        self.owner: LockOwner | None = None
        self.lost: str | None = None  # why the lock is no longer ours
        self._confirmed = 0.0  # time.monotonic() when the lock was last seen to name us
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LockHeld(f"cannot create the run folder {self.path.parent} ({exc.strerror or exc}); choose "
                           f"another --output-root or free space") from None
        owner = LockOwner.of_this_process()
        for _ in range(5):  # a takeover can race with other processes doing the same: retry a few times
            if self._create(owner):
                self.owner, self.lost, self._confirmed = owner, None, time.monotonic()
                self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
                self._thread.start()
                return self
            now = filesystem_now(self.path.parent)
            found = read_owner(self.path, now)
            if found is None:  # unreadable: being written right now, or torn by a crash; give it a moment
                time.sleep(0.2)
                now = filesystem_now(self.path.parent)
                found = read_owner(self.path, now)
                if found is None and self.path.exists():
                    age = now - self.path.stat().st_mtime
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
        """Create the lock naming ``owner``; False if one exists. A lock that cannot be written whole (full disk,
        quota) is removed again and reported as LockHeld: a half-written lock would block the next start."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask
        except FileExistsError:
            return False
        except OSError as exc:
            raise LockHeld(f"cannot create the lock {self.path} ({exc.strerror or exc}); free space or choose "
                           f"another --output-root") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(owner), f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            self.path.unlink(missing_ok=True)
            raise LockHeld(f"cannot write the lock {self.path} ({exc.strerror or exc}); free space or choose "
                           f"another --output-root") from None
        return True

    def _take_over(self, stale: LockOwner | None, reason: str) -> None:
        """Move the dead owner's lock aside (rename is atomic: of several processes doing this, one wins) and check
        that what was moved is the lock judged dead, not a fresh one that another process took meanwhile."""
        aside = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else moved it first; retry the create
        moved = read_owner(aside)
        if stale is not None and (moved is None or moved[0] != stale):
            try:  # it was a live lock: put it back, unless a third process has created one meanwhile
                os.link(aside, self.path)
            except FileExistsError:
                pass  # that third process holds the folder now; the owner we moved notices it lost the lock
            finally:
                aside.unlink(missing_ok=True)
            raise LockHeld(f"{self.path.parent} was just taken by another process; try again")
        aside.unlink(missing_ok=True)
        self.log(f"[run] taking over the lock of {self.path.parent}: {reason}")

    def _still_ours(self) -> bool:
        found = read_owner(self.path)
        if found is not None and found[0] == self.owner:
            self._confirmed = time.monotonic()
            return True
        if found is None and self.path.exists():
            return True  # unreadable for a moment (being replaced?): decide on the next look
        now_owner = f"; it is now held by {found[0].describe()}" if found else ""
        self.lost = f"the lock {self.path} was taken over{now_owner}"
        return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if not self._still_ours():
                self.log(f"[run] {self.lost}; this process stops writing to {self.path.parent}")
                return  # never touch another owner's lock
            try:
                os.utime(self.path)
            except OSError:
                pass  # a transient filesystem error; the next beat tries again

    def check(self) -> None:
        """Raise LockLost if the lock is no longer ours. Cheap: the file is read only when the heartbeat has not
        confirmed it for two beats (e.g. after this process was suspended), so it can be called every step."""
        if self.lost is None and time.monotonic() - self._confirmed > 2 * HEARTBEAT_S:
            self._still_ours()
        if self.lost is not None:
            raise LockLost(f"{self.lost}; this process stopped without writing more (it was suspended or cut off "
                           f"for longer than {STALE_S:.0f} s)")

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
