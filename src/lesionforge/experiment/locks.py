"""Claim files so several worker processes can share one sweep folder (e.g. one process per core).

Hand-written because none of our libraries offers a cross-process claim that survives a crash: Ray would need
a cluster for what is one ``O_EXCL`` create. A claim is a file holding ``host pid``; a claim whose process is
gone (same host) is stale and is taken over, so a killed worker never blocks the sweep.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


class Busy(RuntimeError):
    """The work unit is claimed by another live worker."""


def claim(lock: Path) -> bool:
    """Atomically claim ``lock`` for this process; False when another live process holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if holder_alive(lock):
                return False
            # stale: move it aside under a name only this process uses; a racing worker's rename then fails
            try:
                os.replace(lock, lock.with_name(f"{lock.name}.stale-{os.getpid()}"))
            except FileNotFoundError:
                return False
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}\n")
        return True
    return False


def release(lock: Path) -> None:
    """Drop this process's claim (and any stale claim files it moved aside)."""
    lock.unlink(missing_ok=True)
    for stale in lock.parent.glob(f"{lock.name}.stale-{os.getpid()}"):
        stale.unlink(missing_ok=True)


def holder_alive(lock: Path) -> bool:
    """Whether the process named in ``lock`` still runs. Another host's claim counts as alive (cannot tell);
    an empty or half-written file counts as alive (its writer is between create and write)."""
    try:
        host, pid = lock.read_text(encoding="utf-8").split()
        pid_n = int(pid)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
