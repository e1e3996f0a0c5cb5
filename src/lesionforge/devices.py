"""The one device choice of every trainer: :func:`resolve_device`, and the ``device`` setting of the configs.

``None`` / ``"auto"`` picks CUDA when a GPU is visible, else the CPU (what the generator trainer always did; Apple
MPS only when named, as its kernels are not bit-stable); an explicit name must parse (``cpu``, ``cuda``,
``cuda:1``, ``mps``) and be present on this machine, else a :class:`~lesionforge.errors.ConfigError` names it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from lesionforge.config import StrictModel
from lesionforge.errors import ConfigError

AUTO = "auto"
#: The ``--device`` help of every training command.
DEVICE_HELP = "Where to train: auto (CUDA if visible, else CPU), cpu, cuda, cuda:<i> or mps (default: the config's)."


def _parse(device: str):
    import torch

    try:
        return torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"device {device!r} is not a torch device (use auto, cpu, cuda, cuda:<index> or mps)") from e


def _checked_name(device: str | None) -> str | None:
    if device is not None and device != AUTO:
        try:
            _parse(device)  # a misspelt name fails when the config is read, not when training starts
        except ConfigError as e:
            raise ValueError(str(e)) from e  # pydantic reports it with the file and the field
    return device


#: A config's ``device`` field: ``None`` / ``"auto"`` or a torch device name (checked when the config is read).
DeviceName = Annotated[str | None, AfterValidator(_checked_name)]


class TrainedHere(StrictModel):
    """Base of the settings of every model lesionforge trains (generator, autoencoder, validators): the
    ``device`` to train on (:func:`resolve_device`). Where a model trains is not part of it, so the field is left
    out of dumps and cache keys: a model trained on a GPU and one trained on the CPU share a cache entry."""

    device: DeviceName = Field(None, exclude=True)


def resolve_device(device: str | None = None):
    """The ``torch.device`` to run on: ``device`` when given (it must exist here), else the best available."""
    import torch

    if device is None or device == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = _parse(device)
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index is not None and dev.index >= torch.cuda.device_count())):
        raise ConfigError(f"device {device!r}: no such CUDA device here ({torch.cuda.device_count()} visible)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r}: MPS is not available here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r}: lesionforge trains on cpu, cuda or mps")
    return dev


#: ``1`` / ``0``: hold training data on the device (or not) wherever a trainer is not told (a whole sweep, e.g.
#: ``benchmarks/device/bundle.py run``, whose dry run takes the on-device path on the CPU this way).
DATA_ON_DEVICE_ENV = "LESIONFORGE_DATA_ON_DEVICE"


def data_on_device(device, resident: bool | None = None) -> bool:
    """Whether a trainer holds its training data on ``device`` and assembles and augments its batches there
    (no per-step copy of images from the host): ``resident`` when given (True on the CPU runs that path in tests),
    else ``$LESIONFORGE_DATA_ON_DEVICE`` when set, else on CUDA only. The CPU default keeps the host path, bit for
    bit as before."""
    if resident is not None:
        return resident
    import os

    flag = os.environ.get(DATA_ON_DEVICE_ENV, "").strip()
    if flag not in ("", "0", "1"):
        raise ConfigError(f"${DATA_ON_DEVICE_ENV} is {flag!r}; use 1 (hold training data on the device) or 0")
    return flag == "1" if flag else device.type == "cuda"


def machine_facts() -> dict:
    """Where a number was measured: host, processor model, its vector instruction set as torch uses it (the same
    seed trains another model on an AVX2-only CPU than on an AVX-512 one), cores usable, torch threads and version,
    and the GPU when one is visible (every run record and the speed benchmark carry it; docs quote it with each
    number)."""
    import os
    import platform
    import socket

    import torch

    model = platform.processor() or platform.machine()
    try:  # Linux names the model here; platform.processor() is often empty there
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {"host": socket.gethostname(), "processor": model, "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def end_processes() -> None:
    """End this process's part in a multi-process run (``accelerate launch``): destroy the process group, as
    accelerate's ``end_training`` does, once the command's work is done. A process that exits with its gloo group
    alive can abort in the group's teardown (SIGABRT, "terminate called without an active exception") after its
    work was written. Nothing to do in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank tears the group down while another still uses it
        dist.destroy_process_group()
