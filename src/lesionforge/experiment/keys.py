"""Cache keys: short stable hashes of settings and data ids that name cached models and synthetic sets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lesionforge.utils import file_sha256


def cache_key(*parts: Any) -> str:
    """Short stable hash of JSON-serialisable parts (config dicts, id lists, preset file contents)."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def settings_dump(model: BaseModel, **dump_options: Any) -> Any:
    """``model.model_dump(mode="json", **dump_options)`` with every path to an existing file (a preset, a
    subset's id list) replaced by ``sha256:<its digest>``: a key made of it follows what the file says, not
    where it lies (which checkout folder, ``configs/`` or the packaged presets). Folders stay paths."""
    return _swap_files(model, model.model_dump(mode="json", **dump_options))


def _swap_files(value: Any, dumped: Any) -> Any:
    if isinstance(value, Path):
        return f"sha256:{file_sha256(value)}" if value.is_file() else dumped
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        fields = type(value).model_fields
        return {k: _swap_files(getattr(value, k), v) if k in fields else v for k, v in dumped.items()}
    if isinstance(value, dict) and isinstance(dumped, dict) and len(value) == len(dumped):
        return {k: _swap_files(v, d) for (k, d), v in zip(dumped.items(), value.values(), strict=True)}
    if isinstance(value, list | tuple) and isinstance(dumped, list) and len(value) == len(dumped):
        return [_swap_files(v, d) for v, d in zip(value, dumped, strict=True)]
    return dumped
