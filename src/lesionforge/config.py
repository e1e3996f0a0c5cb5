"""Shared configuration: resolution profiles and strict YAML-backed pydantic models.

Each stage defines its own settings model (``GeneratorConfig``, ``SegmentConfig`` ...) as a subclass of
:class:`StrictModel`; :func:`load_config` validates a YAML preset against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from lesionforge.errors import ConfigError

ProfileName = Literal["tiny", "cpu", "cpu128", "gpu"]

#: Square working resolution of each profile (pixels). ``tiny`` is for tests.
PROFILE_RESOLUTION: dict[str, int] = {"tiny": 32, "cpu": 64, "cpu128": 128, "gpu": 256}


class StrictModel(BaseModel):
    """Base of every config: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


M = TypeVar("M", bound=StrictModel)


def load_config(path: str | Path, model: type[M], overrides: dict | None = None) -> M:
    """Read a YAML file and validate it as ``model``; ``overrides`` (flat or nested dict) win."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    data = _deep_merge(data, overrides or {})
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: {e}") from e


def save_config(cfg: StrictModel, path: str | Path) -> None:
    from lesionforge.utils import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
