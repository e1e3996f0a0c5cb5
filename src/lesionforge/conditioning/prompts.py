"""Text prompts for lesion generation: built-in clinical prompt libraries and user prompt files.

A library is a YAML file (see ``prompts/colon-polyp.yaml``) with

- ``slots``: shared slot values, e.g. ``surface: [smooth surface, lobulated surface]``;
- ``class_slots`` / ``band_slots``: slot values that replace the shared ones for a lesion class
  (``benign``) or a size band (``diminutive``), so prompts stay consistent with the sample;
- ``templates``: strings with ``{slot}`` fields, expanded combinatorially (:func:`expand_templates`);
- ``by_class`` / ``by_id``: templates (or plain prompts) used instead of ``templates`` for one class or
  one sample id;
- ``size_bands``: the library's names of the benchmark protocol's three lesion-size bands (area share of the
  image < 1 %, 1-5 %, > 5 %, defined once in :mod:`lesionforge.data.bands`), so a prompt's size word always
  matches the band the metrics count the lesion in. Default: ``small``, ``medium``, ``large``. Images carry
  no physical scale, so the polyp library names them after the clinical size classes (diminutive < 5 mm,
  small 6-9 mm, large >= 10 mm) as a stated stand-in. An older file's ``max_frac`` per band is accepted
  when it states the protocol's edges (0.01, 0.05, 1.0).

User prompt files are either such a YAML (often just ``by_id`` / ``by_class``) or a CSV with a header
``id,prompt`` or ``class,prompt`` (several rows per key allowed); a user library falls back to another
library (usually the built-in one) for samples it does not cover.
"""

from __future__ import annotations

import csv
import itertools
import re
import string
from importlib import resources
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lesionforge.config import describe_validation_error
from lesionforge.data.bands import BAND_EDGES, BANDS, band_index
from lesionforge.errors import ConfigError, PromptFileError

#: Expansions larger than this are refused: a library with that many prompts is a mistake in the file.
MAX_EXPANSION = 200_000

_DATASET_DOMAINS = {
    "kvasir-seg": "colon-polyp",
    "kvasir": "colon-polyp",
    "cvc-clinicdb": "colon-polyp",
    "colon-normal": "colon-polyp",
    "busi": "breast-ultrasound",
}


class SizeBand(BaseModel):
    """The library's name for one protocol size band (in the order of :data:`lesionforge.data.bands.BANDS`)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    max_frac: float | None = Field(default=None, gt=0.0, le=1.0)  # older files: must be the protocol's edge


def _default_bands() -> list[SizeBand]:
    return [SizeBand(name=b) for b in BANDS]


class PromptSpec(BaseModel):
    """The content of a prompt library file (validated, unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid")
    domain: str = "user"
    description: str = ""
    size_bands: list[SizeBand] = Field(default_factory=_default_bands)
    slots: dict[str, list[str]] = Field(default_factory=dict)
    class_slots: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    band_slots: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    templates: list[str] = Field(default_factory=list)
    by_class: dict[str, list[str]] = Field(default_factory=dict)
    by_id: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("by_class", "by_id", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        # a single prompt per key is the common case in user files: accept "id: prompt" as well as lists
        if isinstance(v, dict):
            return {str(k): [p] if isinstance(p, str) else p for k, p in v.items()}
        return v

    @field_validator("by_class", "class_slots", mode="after")
    @classmethod
    def _lower_keys(cls, v: dict) -> dict:
        return {k.lower(): p for k, p in v.items()}


def expand_templates(templates: list[str], slots: dict[str, list[str]]) -> list[str]:
    """All prompts from ``templates`` with every combination of the ``slots`` values their fields use.

    ``expand_templates(["a {size} {shape} mass"], {"size": ["small"], "shape": ["oval", "round"]})``
    gives ``["a small oval mass", "a small round mass"]``. Order is stable, duplicates are dropped and
    whitespace is tidied (an empty slot value leaves no double space). Raises ``KeyError`` naming a field
    that has no slot and ``ValueError`` when the expansion exceeds :data:`MAX_EXPANSION`.
    """
    out: dict[str, None] = {}
    for template in templates:
        fields = list(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(template) if f))
        missing = [f for f in fields if not slots.get(f)]
        if missing:
            raise KeyError(f"template {template!r} uses slot(s) {missing} that have no values")
        combos = int(np.prod([len(slots[f]) for f in fields])) if fields else 1
        if len(out) + combos > MAX_EXPANSION:
            raise ValueError(f"template {template!r} expands to too many prompts (> {MAX_EXPANSION})")
        for values in itertools.product(*(slots[f] for f in fields)):
            out[_tidy_text(template.format(**dict(zip(fields, values, strict=True))))] = None
    return list(out)


def _tidy_text(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    return re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text).strip(" ,;:")


class PromptLibrary:
    """Prompts for one domain; :meth:`prompt_for` picks one that fits a sample's class and lesion size.

    Example::

        lib = PromptLibrary.load("colon-polyp")
        lib.prompt_for(None, None, 0.004, np.random.default_rng(0))   # a "diminutive ..." prompt
    """

    def __init__(self, spec: PromptSpec, source: str | Path = "<memory>", fallback: PromptLibrary | None = None):
        self.spec = spec
        self.source = str(source)
        self.fallback = fallback
        self._expanded: dict[tuple[str, str | None, str | None], list[str]] = {}  # (source, class, band)
        self._check()

    @property
    def domain(self) -> str:
        return self.spec.domain

    @property
    def classes(self) -> list[str]:
        """Lesion classes with their own slots or prompts (lower case)."""
        return sorted(set(self.spec.class_slots) | set(self.spec.by_class))

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.spec.size_bands]

    @classmethod
    def load(cls, domain: str) -> PromptLibrary:
        """The built-in library of ``domain`` (one of :func:`available_domains`)."""
        if domain not in available_domains():
            raise ConfigError(f"no built-in prompt library {domain!r}; available: {available_domains()}")
        ref = resources.files("lesionforge.conditioning") / "prompts" / f"{domain}.yaml"
        return cls(_parse_yaml(ref.read_text(encoding="utf-8"), str(ref)), source=str(ref))

    @classmethod
    def from_file(cls, path: str | Path, fallback: PromptLibrary | None = None) -> PromptLibrary:
        """A user prompt file: library YAML (``.yaml``/``.yml``) or CSV (``id,prompt`` / ``class,prompt``).

        ``fallback`` answers for samples the file does not cover. Raises :class:`PromptFileError`.
        """
        path = Path(path)
        if not path.is_file():
            raise PromptFileError(path, "prompt file not found")
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            spec = _parse_yaml(path.read_text(encoding="utf-8"), path)
        elif suffix == ".csv":
            spec = _parse_csv(path)
        else:
            raise PromptFileError(path, f"unknown prompt file type {suffix!r}; use .yaml, .yml or .csv")
        return cls(spec, source=path, fallback=fallback)

    def band_for_area(self, area_frac: float) -> str:
        """The library's name of the protocol size band (:func:`~lesionforge.data.bands.band_index`) of a lesion
        covering ``area_frac`` (in [0, 1]) of the image."""
        return self.spec.size_bands[band_index(area_frac)].name

    def prompts(
        self, label_class: str | None = None, band: str | None = None, sample_id: str | None = None
    ) -> list[str]:
        """Every prompt this library gives for a sample (by id, else by class, else the templates)."""
        cls_key = label_class.lower() if label_class else None
        if sample_id is not None and sample_id in self.spec.by_id:
            source, templates = f"id:{sample_id}", self.spec.by_id[sample_id]
        elif cls_key is not None and cls_key in self.spec.by_class:
            source, templates = "class", self.spec.by_class[cls_key]
        else:
            source, templates = "templates", self.spec.templates
        key = (source, cls_key, band)
        if key not in self._expanded:
            self._expanded[key] = expand_templates(templates, self._slots(cls_key, band))
        return self._expanded[key]

    def prompt_for(
        self,
        sample_id: str | None,
        label_class: str | None,
        lesion_area_frac: float | None,
        rng: np.random.Generator,
    ) -> str:
        """One prompt for a sample, consistent with its class and the size band of its lesion.

        Order of precedence: a prompt given for ``sample_id``, then for ``label_class``, then the library
        templates (with the class's and band's slot values), then the ``fallback`` library. With
        ``lesion_area_frac`` None the band is drawn at random. Raises :class:`PromptFileError` when
        neither this library nor its fallback has a prompt.
        """
        band = (
            self.band_for_area(lesion_area_frac)
            if lesion_area_frac is not None
            else self.band_names[int(rng.integers(len(self.band_names)))]
        )
        covered = (sample_id is not None and sample_id in self.spec.by_id) or (
            label_class is not None and label_class.lower() in self.spec.by_class
        )
        if not covered and not self.spec.templates and self.fallback is not None:
            return self.fallback.prompt_for(sample_id, label_class, lesion_area_frac, rng)
        options = self.prompts(label_class, band, sample_id)
        if not options:
            raise PromptFileError(self.source, f"no prompt for sample {sample_id!r} of class {label_class!r}")
        return options[int(rng.integers(len(options)))]

    def _slots(self, label_class: str | None, band: str | None) -> dict[str, list[str]]:
        slots = dict(self.spec.slots)
        slots.update(self.spec.class_slots.get(label_class or "", {}))
        slots.update(self.spec.band_slots.get(band or "", {}))
        return slots

    def _check(self) -> None:
        """Fail at load time, naming the file, rather than mid-generation on an unlucky draw."""
        spec = self.spec
        if not (spec.templates or spec.by_class or spec.by_id):
            raise PromptFileError(self.source, "no prompts: give 'templates', 'by_class' or 'by_id'")
        edges = (*BAND_EDGES, 1.0)
        if len(spec.size_bands) != len(BANDS) or any(
                b.max_frac is not None and b.max_frac != e for b, e in zip(spec.size_bands, edges, strict=True)):
            raise PromptFileError(self.source, f"size_bands must name the protocol's {len(BANDS)} size bands (< 1 %, "
                                               "1-5 %, > 5 % of the image; max_frac, if given, 0.01, 0.05, 1.0)")
        for key in spec.band_slots:
            if key not in self.band_names:
                raise PromptFileError(self.source, f"band_slots names unknown size band {key!r}")
        try:
            for band in self.band_names:
                for label_class in [None, *self.classes]:
                    self.prompts(label_class, band)
                for sample_id in spec.by_id:
                    self.prompts(None, band, sample_id)
        except (KeyError, ValueError, IndexError) as e:
            raise PromptFileError(self.source, f"bad template: {e}") from e


def available_domains() -> list[str]:
    """Names of the built-in prompt libraries (``prompts/*.yaml`` in the package)."""
    folder = resources.files("lesionforge.conditioning") / "prompts"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def domain_for_dataset(name: str) -> str:
    """Built-in prompt domain for a dataset name or folder: kvasir-seg -> colon-polyp, busi ->
    breast-ultrasound, anything else -> generic."""
    key = Path(str(name)).name.lower() if name else ""
    return _DATASET_DOMAINS.get(key, "generic")


def load_prompt_library(
    domain: str | None = None, dataset: str | None = None, file: str | Path | None = None
) -> PromptLibrary:
    """The prompt library to use: ``file`` (a user prompt file) falling back to the built-in library of
    ``domain``, or of the dataset's domain (:func:`domain_for_dataset`), or ``generic``."""
    base = PromptLibrary.load(domain or (domain_for_dataset(dataset) if dataset else "generic"))
    return PromptLibrary.from_file(file, fallback=base) if file is not None else base


def _parse_yaml(text: str, source: str | Path) -> PromptSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PromptFileError(source, f"not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise PromptFileError(source, "top level must be a mapping (keys: templates, slots, by_id, by_class ...)")
    try:
        return PromptSpec.model_validate(data)
    except ValidationError as e:
        raise PromptFileError(source, f"invalid prompt library: {describe_validation_error(e, PromptSpec)}") from e


def _parse_csv(path: Path) -> PromptSpec:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise PromptFileError(path, "empty CSV; expected a header 'id,prompt' or 'class,prompt'")
    header = [h.strip().lower() for h in rows[0]]
    key_col = "id" if "id" in header else "class" if "class" in header else None
    if key_col is None or "prompt" not in header:
        raise PromptFileError(path, f"CSV header {rows[0]} must have columns 'prompt' and 'id' or 'class'")
    ki, pi = header.index(key_col), header.index("prompt")
    table: dict[str, list[str]] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(ki, pi) or not row[ki].strip() or not row[pi].strip():
            raise PromptFileError(path, f"line {line_no}: needs a non-empty {key_col!r} and 'prompt'")
        table.setdefault(row[ki].strip(), []).append(row[pi].strip())
    if not table:
        raise PromptFileError(path, "CSV has a header but no prompt rows")
    return PromptSpec(**{"by_id" if key_col == "id" else "by_class": table})
