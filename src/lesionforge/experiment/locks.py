"""Claim files so several worker processes can share one sweep folder (e.g. one process per core).

Hand-written because none of our libraries offers a cross-process claim that survives a crash: Ray would need
a cluster for what is one locked file, and ``filelock`` neither records who holds a lock nor gives it up when
the holder is on another host and gone.

How a claim works. The claim file (``run.lock``) is opened and locked with ``fcntl.flock(LOCK_EX | LOCK_NB)``;
the lock is held for the life of the claim and the kernel drops it when the process dies, however it dies
(SIGKILL included). So on one host staleness needs no guessing from pids: whoever gets the flock on the file
that is at the path now holds the claim, and exactly one process can. After the flock the file is checked to
still be the one at the path (a releasing holder unlinks it; a process that opened the old file before the
unlink must not think it holds the new one), then ``host pid token`` is written into it, then read back
(verify-owner). This was chosen over create-exclusive + rename takeover (the previous design): there, taking
over a stale claim is check-then-act on a file whose liveness is read from its contents, and two processes
both won a stale claim in about a third of trials.

When a free flock still does not mean a free claim: the file names *another host*. flock over NFS may be
local to each client, so a live holder on another host may hold no lock we can see. Its claim counts as held
while fresh: every holder touches its claim files every :data:`HEARTBEAT_S` seconds, and a claim untouched
for :data:`STALE_AFTER_S` (host clocks assumed within minutes of each other) is stale. An empty or
unreadable claim file under a free flock is stale (on one host its writer cannot be mid-write: it would hold
the flock). Two hosts on a file system without shared locks can still both take over one *stale* claim at
the same moment; the read-back narrows that to a few milliseconds, and two live hosts never share a claim.

The lock belongs to the open file, so a child forked (without exec) while a claim is held would keep it
until the child exits; lesionforge's stages fork no such children.

``release`` removes only this process's own claim: a file at the path that is not ours (e.g. taken over
after our heartbeat lapsed) is left alone.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from lesionforge.errors import ConfigError

HEARTBEAT_S = 60.0  # how often a holder touches its claims
STALE_AFTER_S = 15 * 60.0  # another host's claim untouched this long is stale
# how long a worker with nothing left to do waits for runs others hold: longer than any one run or synthetic set
# of the benchmark configs (about 1 h on CPU), so it only fires on a hung worker
WAIT_TIMEOUT_S = 6 * 3600.0


class Busy(RuntimeError):
    """The work unit is claimed by another live worker. ``lock`` is its claim file."""

    def __init__(self, message: str, lock: Path | None = None):
        super().__init__(message)
        self.lock = lock


@dataclass(frozen=True)
class Holder:
    """Who a claim file names: host, pid, and how long since the holder last touched it."""

    host: str
    pid: int
    age_s: float

    def __str__(self) -> str:
        return f"{self.host} pid {self.pid}"


@dataclass
class _Claim:
    fd: int
    ino: int
    token: str


_held: dict[str, _Claim] = {}  # this process's claims, by absolute path
_held_guard = threading.Lock()
_heartbeat: threading.Thread | None = None


def claim(lock: Path, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Atomically claim ``lock`` for this process; False when another live holder has it."""
    lock = Path(lock).absolute()
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):  # retried only when the file was released (unlinked) under us
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as e:  # ENOLCK, EOPNOTSUPP: a file system without locks; no claim would be safe there
            os.close(fd)
            raise ConfigError(
                f"{lock}: this file system does not support file locks ({e.strerror}); "
                "put the sweep's output folder on a local disk"
            ) from None
        try:
            ino = os.fstat(fd).st_ino
            if _inode(lock) != ino:  # unlinked by its releasing holder after we opened it: try the new file
                os.close(fd)
                continue
            if not _stale(fd, stale_after_s):
                os.close(fd)
                return False
            token = uuid.uuid4().hex
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()} {os.getpid()} {token}\n".encode(), 0)
            os.fsync(fd)
            if _token(lock) != token:  # another host overwrote it meanwhile (no shared flock there): theirs
                os.close(fd)
                return False
        except BaseException:
            os.close(fd)
            raise
        with _held_guard:
            _held[str(lock)] = _Claim(fd, ino, token)
        _start_heartbeat()
        return True
    return False


def release(lock: Path) -> bool:
    """Drop this process's claim on ``lock``: the file is removed only if it still is our claim. A claim
    this process does not hold is left as it is. Returns whether the file was removed."""
    lock = Path(lock).absolute()
    with _held_guard:
        mine = _held.pop(str(lock), None)
    if mine is None:
        return False
    try:
        # unlink while still holding the flock, so no one can claim the file we are about to remove
        ours = _inode(lock) == mine.ino and _token(lock) == mine.token
        if ours:
            lock.unlink(missing_ok=True)
        return ours
    finally:
        os.close(mine.fd)  # drops the flock


def holder(lock: Path) -> Holder | None:
    """Who the claim file names (for messages); None when there is no readable claim."""
    try:
        host, pid, _token_ = Path(lock).read_text(encoding="utf-8").split()
        return Holder(host, int(pid), max(0.0, time.time() - Path(lock).stat().st_mtime))
    except (OSError, ValueError):
        return None


def holder_alive(h: Holder, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether the holder a claim file names looks alive, without touching its lock (for a status report; a
    claim itself is decided by the flock, see :func:`claim`): on this host its process exists, on another host its
    heartbeat is fresh."""
    if h.host != socket.gethostname():
        return h.age_s < stale_after_s
    try:
        os.kill(h.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _stale(fd: int, stale_after_s: float) -> bool:
    """With the flock in hand: is the claim in ``fd`` free to take? (See the module docstring.)"""
    text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").split()
    if len(text) != 3 or not text[1].isdigit():
        return True  # empty, or half-written by a process that died writing it
    if text[0] == socket.gethostname():
        return True  # its holder is gone: the kernel dropped its flock
    return time.time() - os.fstat(fd).st_mtime > stale_after_s


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _token(path: Path) -> str | None:
    try:
        parts = path.read_text(encoding="utf-8").split()
    except OSError:
        return None
    return parts[2] if len(parts) == 3 else None


def _start_heartbeat() -> None:
    global _heartbeat
    with _held_guard:
        if _heartbeat is not None and _heartbeat.is_alive():
            return
        _heartbeat = threading.Thread(target=_beat, name="lesionforge-claim-heartbeat", daemon=True)
        _heartbeat.start()


def _beat() -> None:
    """Touch every held claim every :data:`HEARTBEAT_S` so another host sees it as fresh."""
    last = time.monotonic()
    while True:
        time.sleep(min(HEARTBEAT_S, 1.0))
        if time.monotonic() - last < HEARTBEAT_S:
            continue
        last = time.monotonic()
        with _held_guard:  # under the guard: a released claim's fd is popped before it is closed
            for c in _held.values():
                try:
                    os.utime(c.fd)
                except OSError:
                    pass  # a full or read-only disk: the next beat tries again


def _forget_after_fork() -> None:
    """A forked child holds none of its parent's claims (it must not release them), and must not inherit
    the guard locked by the parent's heartbeat thread at the moment of the fork."""
    global _held, _held_guard, _heartbeat
    _held, _held_guard, _heartbeat = {}, threading.Lock(), None


os.register_at_fork(after_in_child=_forget_after_fork)
