"""Resumable training state in one folder: the model's weights (safetensors), an optimizer blob and the step.

Shared by the autoencoder and validator trainers, whose state is "one model + its optimizer(s)". Each file
is replaced atomically and ``step.json`` is written last, so a state without it is never resumed from. (The
generator trainer keeps rotating ``checkpoint-<step>`` folders with EMA and diffusers weights, and the
segmentation trainer a ``last-<step>`` model folder, so they have their own formats.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lesionforge.errors import CheckpointError
from lesionforge.outputs import announce_resume
from lesionforge.utils import atomic_path, write_json_atomic

TRAIN_STATE = "train_state"


def save_train_state(out_dir: Path, weights_name: str, model: torch.nn.Module, optim: Any, step: int) -> None:
    """Write ``out_dir/train_state/{weights_name}.safetensors``, ``optim.pt`` (``optim``: optimizer state
    dicts, anything ``torch.load(weights_only=True)`` can read back) and ``step.json``."""
    state = Path(out_dir) / TRAIN_STATE
    state.mkdir(parents=True, exist_ok=True)
    with atomic_path(state / f"{weights_name}.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    with atomic_path(state / "optim.pt") as tmp:
        torch.save(optim, tmp)
    write_json_atomic(state / "step.json", {"step": step})


def load_train_state(out_dir: Path, weights_name: str, model: torch.nn.Module) -> tuple[int, Any]:
    """Load the weights into ``model``; returns (step, optimizer blob), or (0, None) when there is no state.
    Weights of another architecture are a :class:`CheckpointError` naming the folder."""
    state = Path(out_dir) / TRAIN_STATE
    if not (state / "step.json").is_file():
        return 0, None
    try:
        model.load_state_dict(load_file(str(state / f"{weights_name}.safetensors")))
    except RuntimeError as e:  # a run with another architecture in the same folder
        raise CheckpointError(f"{state}: checkpoint does not match the config ({e}); use a new output folder") from e
    optim = torch.load(state / "optim.pt", weights_only=True)
    step = int(json.loads((state / "step.json").read_text(encoding="utf-8"))["step"])
    announce_resume(out_dir, f"step {step} ({TRAIN_STATE}/)")
    return step, optim
