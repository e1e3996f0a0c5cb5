"""What every Ray-executed command shares: connecting, a task's resource needs, retries, and the fault hook.

Ray (``pip install 'lesionforge[ray]'``) is imported only here and only when a command asks for
``--executor ray``; the local executor never needs it.

Retries: a task whose worker process dies (killed, out of memory, node lost) is rerun by Ray up to
``max_retries`` times, and so is one that raised, except on a :class:`~lesionforge.errors.LesionforgeError`
(bad input or settings: a rerun cannot help). Such an error travels back as a value and is raised by the
driver as the one-line error it is; a task given such a failure as an input passes it on unrun.
"""

from __future__ import annotations

import glob
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesionforge.errors import ConfigError, LesionforgeError

MAX_RETRIES = 3
#: Fault injection (for tests): in the folder this variable names (it must be set before Ray starts its workers),
#: a file ``fault`` holding ``<part of a task name>`` and a path glob on two lines makes the first task whose
#: name holds that part SIGKILL its own worker once a file matches the glob (e.g. a mid-way checkpoint): a worker
#: lost mid-task. The file is renamed ``fault-fired`` (``<task> pid <pid>``), so the fault happens once.
FAULT_DIR_ENV = "LESIONFORGE_RAY_FAULT_DIR"

@dataclass(frozen=True)
class TaskResources:
    """What one task asks the cluster for. ``num_gpus`` None: one GPU when the cluster has any, else none."""

    num_cpus: float = 1.0
    num_gpus: float | None = None
    memory_gb: float | None = None

    def resolved(self, ray) -> TaskResources:
        """These needs with ``num_gpus`` decided by the connected cluster."""
        if self.num_gpus is not None:
            return self
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        return TaskResources(self.num_cpus, gpus, self.memory_gb)

    def options(self, name: str, max_retries: int) -> dict[str, Any]:
        opts = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus or 0.0, "max_retries": max_retries,
                "retry_exceptions": True, "name": name}
        if self.memory_gb:
            opts["memory"] = int(self.memory_gb * 1024**3)
        return opts

    @property
    def threads(self) -> int:
        return max(1, int(self.num_cpus))


def connect(address: str | None = None) -> Any:
    """The ``ray`` module, connected: to the cluster at ``address`` ("auto": the one this node belongs to), or
    a local instance on this machine when None. An existing connection (e.g. a test's) is kept."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError("--executor ray needs Ray: pip install 'lesionforge[ray]'") from e
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError) as e:
            raise ConfigError(f"cannot start or reach a Ray cluster at {address or 'this machine'}: {e}") from e
    return ray


@dataclass
class Failure:
    """A task's :class:`LesionforgeError`, carried back as a value (not retried)."""

    error: LesionforgeError


def unit(name: str, threads: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Body of every task: set its torch threads, run ``fn(*args)``; a LesionforgeError becomes a Failure."""
    failed = next((a for a in args if isinstance(a, Failure)), None)
    if failed is not None:
        return failed
    import torch

    torch.set_num_threads(threads)
    done = threading.Event()
    _fault_hook(name, done)
    try:
        return fn(*args)
    except LesionforgeError as e:
        return Failure(e)
    finally:
        done.set()


def submit(ray, name: str, resources: TaskResources, max_retries: int, fn: Callable[..., Any], *args: Any):
    """Submit ``fn(*args)`` as a task named ``name``; ObjectRefs among ``args`` are its dependencies."""
    if "unit" not in _remote:  # exported to the cluster once per driver
        _remote["unit"] = ray.remote(unit)
    task = _remote["unit"].options(**resources.options(name, max_retries))
    return task.remote(name, resources.threads, fn, *args)


_remote: dict[str, Any] = {}


def value(ray, refs):
    """``ray.get(refs)``, raising a carried :class:`LesionforgeError` as itself."""
    out = ray.get(refs)
    for v in out if isinstance(out, list) else [out]:
        if isinstance(v, Failure):
            raise v.error
    return out


def _fault_hook(name: str, done: threading.Event) -> None:
    folder = os.environ.get(FAULT_DIR_ENV)
    spec = Path(folder) / "fault" if folder else None
    if spec is None or not spec.is_file():
        return
    part, pattern = (spec.read_text(encoding="utf-8").splitlines() + ["", ""])[:2]
    if not part or part not in name:
        return
    fired = spec.with_name("fault-fired")
    try:  # one rename wins: the first such task takes the fault, its retry (and every other task) runs clean
        os.rename(spec, fired)
    except FileNotFoundError:
        return
    fired.write_text(f"{name} pid {os.getpid()}\n", encoding="utf-8")

    def kill() -> None:
        while not done.is_set():
            if glob.glob(pattern):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.01)

    threading.Thread(target=kill, daemon=True).start()
