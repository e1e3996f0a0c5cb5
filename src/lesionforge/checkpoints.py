"""The one checkpoint format, for every model lesionforge trains.

- **Weights** are safetensors (no code runs when a file is read), with a JSON file beside them that says what
  they are: ``model.safetensors`` + ``segmenter.json`` (segmentation networks), ``model.safetensors`` +
  ``extractor_config.json`` (the seg-encoder feature extractor), ``<name>.safetensors`` + ``step.json`` in a
  ``train_state/`` folder (autoencoder, validators, seg-encoder while training). Diffusers models (generators,
  autoencoders, validator networks) use diffusers' ``save_pretrained``, which is the same thing: config JSON +
  safetensors. EMA weights of a generator checkpoint are ``ema.safetensors`` + ``ema.json``.
- **Training state that is not weights** (optimizer moments, LR schedule, RNG state) is ``torch.save``-d and read
  back with ``torch.load(weights_only=True)``: plain tensors and containers only, never pickled code.

Older formats still read (so existing run folders and caches resume, and committed results rebuild): the seg-encoder's
``train_state.pt`` (weights inside a torch.save blob), a generator checkpoint's ``ema.pt`` and an autoencoder
state's discriminator weights inside ``optim.pt``; each reader says where it handles its legacy file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from lesionforge.errors import CheckpointError
from lesionforge.utils import atomic_path, write_json_atomic

WEIGHTS = "model.safetensors"


def save_weights(model: torch.nn.Module, path: str | Path) -> Path:
    """Write ``model``'s weights to the safetensors file ``path`` atomically."""
    with atomic_path(Path(path)) as tmp:
        save_model(model, str(tmp))
    return Path(path)


def load_weights(model: torch.nn.Module, path: str | Path, device: str | torch.device = "cpu") -> None:
    """Load the safetensors file ``path`` into ``model``; weights that do not fit are a :class:`CheckpointError`
    naming the file."""
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device=str(device))
    except (RuntimeError, OSError) as e:  # shape mismatches raise even when not strict; a torn or absent file
        raise CheckpointError(f"{path}: weights do not fit {type(model).__name__} ({e})") from e
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit {type(model).__name__} (missing {sorted(missing)[:3]}, "
                              f"extra {sorted(unexpected)[:3]})")


def save_model_folder(model: torch.nn.Module, folder: str | Path, meta_name: str, meta: dict[str, Any]) -> Path:
    """``folder/model.safetensors`` and ``folder/<meta_name>`` (JSON, written last: a folder with it is complete)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / WEIGHTS)
    write_json_atomic(folder / meta_name, meta)
    return folder


def read_model_meta(folder: str | Path, meta_name: str, what: str) -> dict[str, Any]:
    """The JSON meta of a model folder; a folder without it or its weights is a :class:`CheckpointError`."""
    folder = Path(folder)
    if not (folder / meta_name).is_file() or not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"{folder}: not a {what} folder (needs {WEIGHTS} and {meta_name})")
    try:
        return json.loads((folder / meta_name).read_text(encoding="utf-8"))
    except ValueError as e:
        raise CheckpointError(f"{folder / meta_name}: not valid JSON ({e})") from e


def save_tensor_state(state: dict[str, Any], stem: str | Path) -> None:
    """A state dict of tensors, lists of tensors and JSON values (e.g. an EMA model's) as ``<stem>.safetensors``
    (the tensors, list items as ``<key>.<i>``) and ``<stem>.json`` (everything else, and the list lengths)."""
    stem = Path(stem)
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {"_lists": {}}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            tensors[k] = v
        elif isinstance(v, list | tuple) and v and all(isinstance(t, torch.Tensor) for t in v):
            tensors.update({f"{k}.{i}": t for i, t in enumerate(v)})
            rest["_lists"][k] = len(v)
        else:
            rest[k] = v
    with atomic_path(stem.with_suffix(".safetensors")) as tmp:
        save_file({k: t.detach().contiguous().cpu() for k, t in tensors.items()}, str(tmp))
    write_json_atomic(stem.with_suffix(".json"), rest)


def load_tensor_state(stem: str | Path) -> dict[str, Any]:
    """Read back what :func:`save_tensor_state` wrote."""
    stem = Path(stem)
    rest = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    tensors = load_file(str(stem.with_suffix(".safetensors")))
    lists = rest.pop("_lists", {})
    out = {k: v for k, v in rest.items()}
    out.update({k: [tensors[f"{k}.{i}"] for i in range(n)] for k, n in lists.items()})
    out.update({k: t for k, t in tensors.items() if k.rpartition(".")[0] not in lists})
    return out


def save_torch_state(obj: Any, path: str | Path) -> None:
    """Optimizer / scheduler / RNG state (tensors and plain containers), atomically; read with
    :func:`load_torch_state`."""
    with atomic_path(Path(path)) as tmp:
        torch.save(obj, tmp)


def load_torch_state(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, no pickled code."""
    return torch.load(path, map_location="cpu", weights_only=True)
