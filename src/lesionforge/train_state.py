"""Resumable training state in one folder: the weights (safetensors), an optimizer blob and the step.

Shared by the autoencoder, validator and seg-encoder trainers, whose state is "a model (plus any helper networks,
e.g. the autoencoder's discriminator) and its optimizer(s)"; the format is :mod:`lesionforge.checkpoints`'. Each
file is replaced atomically and ``step.json`` is written last, so a state without it is never resumed from. (The
generator trainer keeps rotating ``checkpoint-<step>`` folders with EMA and diffusers weights, and the
segmentation trainer a ``last-<step>`` model folder, in the same format.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lesionforge.checkpoints import load_torch_state, load_weights, save_torch_state, save_weights
from lesionforge.errors import CheckpointError
from lesionforge.outputs import announce_resume
from lesionforge.utils import write_json_atomic

TRAIN_STATE = "train_state"


def save_train_state(out_dir: Path, weights_name: str, model: torch.nn.Module, optim: Any, step: int,
                     helpers: dict[str, torch.nn.Module] | None = None) -> None:
    """Write ``out_dir/train_state/{weights_name}.safetensors`` (and ``{name}.safetensors`` of each helper
    network), ``optim.pt`` (``optim``: optimizer state dicts, anything ``torch.load(weights_only=True)`` can read
    back) and ``step.json``."""
    state = Path(out_dir) / TRAIN_STATE
    state.mkdir(parents=True, exist_ok=True)
    for name, net in {weights_name: model, **(helpers or {})}.items():
        save_weights(net, state / f"{name}.safetensors")
    save_torch_state(optim, state / "optim.pt")
    write_json_atomic(state / "step.json", {"step": step})


def load_train_state(out_dir: Path, weights_name: str, model: torch.nn.Module,
                     helpers: dict[str, torch.nn.Module] | None = None) -> tuple[int, Any]:
    """Load the weights into ``model`` (and the helpers whose files exist: an older state kept them in the
    optimizer blob, which the caller reads); returns (step, optimizer blob), or (0, None) when there is no state.
    Weights of another architecture are a :class:`CheckpointError` naming the folder."""
    state = Path(out_dir) / TRAIN_STATE
    if not (state / "step.json").is_file():
        return 0, None
    try:
        for name, net in {weights_name: model, **(helpers or {})}.items():
            if name == weights_name or (state / f"{name}.safetensors").is_file():
                load_weights(net, state / f"{name}.safetensors")
    except CheckpointError as e:  # a run with another architecture in the same folder
        raise CheckpointError(f"{state}: checkpoint does not match the config ({e}); use a new output folder") from e
    optim = load_torch_state(state / "optim.pt")
    step = int(json.loads((state / "step.json").read_text(encoding="utf-8"))["step"])
    announce_resume(out_dir, f"step {step} ({TRAIN_STATE}/)")
    return step, optim
