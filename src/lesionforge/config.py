"""Shared configuration: resolution profiles and strict YAML-backed pydantic models.

Each stage defines its own settings model (``GeneratorConfig``, ``SegmentConfig`` ...) as a subclass of
:class:`StrictModel`; :func:`resolve_preset` validates a YAML preset (with
overrides) against it.
"""

from __future__ import annotations

import difflib
import types
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer

from lesionforge.errors import ConfigError
from lesionforge.presets import preset_path

ProfileName = Literal["tiny", "cpu", "cpu128", "gpu"]

#: Square working resolution of each profile (pixels). ``tiny`` is for tests.
PROFILE_RESOLUTION: dict[str, int] = {"tiny": 32, "cpu": 64, "cpu128": 128, "gpu": 256}


class StrictModel(BaseModel):
    """Base of every config: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LaterFields(StrictModel):
    """A settings block that gained fields after result files were written: each field named in
    ``_omitted_when_none`` is left out of dumps while None, so the config hashes and cache keys of every config
    written before it (and the sweeps and caches made from them) stay as they were."""

    _omitted_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_later_fields_when_none(self, handler):
        out = handler(self)
        if isinstance(out, dict):
            for k in self._omitted_when_none:
                if getattr(self, k) is None:
                    out.pop(k, None)
        return out


M = TypeVar("M", bound=StrictModel)


def load_config(path: str | Path, model: type[M], overrides: dict | None = None) -> M:
    """Read a YAML file (or the packaged preset of that file name, see :func:`~lesionforge.presets.preset_path`)
    and validate it as ``model``; ``overrides`` (flat or nested dict) win (see :func:`resolve_preset`)."""
    return resolve_preset(path, overrides, model)


def resolve_preset(preset: str | Path | None, overrides: dict | None, model: type[M], where: str = "overrides") -> M:
    """The one merge of a preset with overrides, for every stage: the ``preset`` YAML file (or the packaged preset
    of that file name; None: ``model``'s defaults), then ``overrides`` on top, validated as ``model``. Merging is
    by key: a mapping merges into the preset's mapping of the same key (recursively), anything else (a number, a
    list, None) replaces the preset's value. A failure is one :class:`ConfigError` line naming the preset file, or
    ``where`` (the config block the overrides came from) when there is none."""
    path = preset_path(preset) if preset is not None else None
    data = _read_mapping(path) if path is not None else {}
    return validate_config(model, _deep_merge(data, overrides or {}), str(path) if path is not None else where)


def _read_mapping(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def validate_config(model: type[M], data: Any, where: str) -> M:
    """``model.model_validate(data)``; a failure becomes one :class:`ConfigError` line starting with ``where``
    (a file, or the config block the data came from). Every config loader goes through here."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{where}: {describe_validation_error(e, model)}") from None


def describe_validation_error(e: ValidationError, model: type[BaseModel]) -> str:
    """Pydantic's errors in plain words, ``; ``-joined on one line: an unknown key is named with its dotted
    path and the closest valid key (a typo is the usual cause); other errors keep pydantic's message."""
    out = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(model, err["loc"][:-1])
            close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
            out.append(f"unknown key {loc!r} ({hint})")
        elif err["type"] == "missing":
            out.append(f"missing key {loc!r}")
        else:
            value = "" if isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
            out.append(f"{loc + ': ' if loc else ''}{err['msg']}{value}")
    return "; ".join(out)


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names (and aliases) of the model found at ``loc`` inside ``model``; ``[]`` if unknown."""
    types_at: list[Any] = [model]
    for part in loc:
        nxt: list[Any] = []
        for t in _flatten(types_at):
            if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str) and part in t.model_fields:
                nxt.append(t.model_fields[part].annotation)
            elif get_origin(t) in (list, tuple, set) and isinstance(part, int):
                nxt.extend(get_args(t)[:1])
            elif get_origin(t) is dict:
                nxt.extend(get_args(t)[1:2])
        types_at = nxt
    keys: list[str] = []
    for t in _flatten(types_at):
        if isinstance(t, type) and issubclass(t, BaseModel):
            for name, f in t.model_fields.items():
                keys += [name] + ([f.alias] if f.alias and f.alias != name else [])
    return list(dict.fromkeys(keys))


def _flatten(annotations: list[Any]) -> list[Any]:
    """Unwrap ``X | None`` and other unions into their members."""
    out = []
    for t in annotations:
        if get_origin(t) in (Union, types.UnionType):
            out += _flatten(list(get_args(t)))
        else:
            out.append(t)
    return out


def save_config(cfg: StrictModel, path: str | Path) -> None:
    from lesionforge.utils import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
