"""The experiment configuration: one YAML describes a whole benchmark sweep.

The segmentation settings live in one block shared by every arm, so arms can only differ in the data they
train on (identical budgets by construction; an arm has no field that could change steps, batch or lr).
Relative paths in the YAML are resolved against the folder of the YAML file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_serializer, model_validator

from lesionforge.config import PROFILE_RESOLUTION, ProfileName, StrictModel, load_config, validate_config
from lesionforge.errors import ConfigError
from lesionforge.loop.settings import LoopSettings

ArmKind = Literal["baseline", "copy-paste", "synthetic", "closed-loop"]
MixingMode = Literal["ratio", "alpha", "patch-merge", "synthetic-only"]
SynthesisMethod = Literal["mask-conditioned", "joint", "inpaint-normal", "edge-guided"]
#: protocol name of a synthesis method -> generator kind (``GeneratorConfig.kind``)
GENERATOR_KIND: dict[str, str] = {
    "mask-conditioned": "mask2image", "joint": "joint", "inpaint-normal": "inpaint", "edge-guided": "edge-text",
}


class DemoData(StrictModel):
    """Procedural demo data written into the output folder instead of reading a dataset root."""

    n: int = 40
    size: int = 32
    seed: int = 0
    normal_fraction: float = 0.2


class VolumeSettings(StrictModel):
    """How a volume dataset (NIfTI / DICOM, :mod:`lesionforge.data.volumes`) becomes 2D samples. The split file
    may list cases: N labelled then counts volumes, and every slice of a case goes where the case goes.

    Training and validation use the slices with foreground; ``negative_share`` adds foreground-free slices of the
    same cases to the training set as negatives, that share of each case's slices (0: none; capped at the ones a
    case has). The test set holds every slice of each test case: per-slice metrics are scored on the slices with
    foreground, the 3D Dice on the whole reassembled volume. The task is the binary union of all foreground
    labels (multi-label files, e.g. anterior/posterior hippocampus, are read as their union)."""

    axis: Literal[0, 1, 2] = 2
    min_area: int = 1  # a slice is a positive when its foreground covers at least this many pixels
    normalise: Literal["auto", "window", "zscore"] = "auto"  # auto: zscore for MRI per dataset.json
    negative_share: float = Field(0.0, ge=0.0, lt=1.0)

    def read_options(self) -> dict:
        """Keyword arguments of :func:`lesionforge.data.readers.read_dataset` (negatives always read)."""
        return {"axis": self.axis, "min_area": self.min_area, "normalise": self.normalise, "negatives": True}


class DatasetSettings(StrictModel):
    """Where the data and its fixed split are. ``split`` is a split JSON path or a benchmark split name."""

    name: str
    root: Path | None = None
    split: str | None = None
    channels: int = 3
    demo: DemoData | None = None
    #: image-only folder of lesion-free backgrounds (e.g. colon-normal); else the split's normal_backgrounds
    backgrounds_root: Path | None = None
    #: ids of a named subset scored separately, e.g. Kvasir's sessile (flat) polyps: a text file, one id a line
    subsets: dict[str, Path] = Field(default_factory=dict)
    #: a volume dataset: slicing, normalisation, negatives (None: a 2D dataset)
    volumes: VolumeSettings | None = None

    @model_validator(mode="after")
    def _root_or_demo(self) -> DatasetSettings:
        if (self.root is None) == (self.demo is None):
            raise ValueError("dataset: give exactly one of `root` (with `split`) or `demo`")
        if self.root is not None and self.split is None:
            raise ValueError("dataset: `split` is required with `root`")
        if self.volumes is not None and self.demo is not None:
            raise ValueError("dataset: `volumes` needs a `root` of volumes, not the demo data")
        return self


class TransferDataset(StrictModel):
    """Another dataset the trained models are scored on, unchanged. ``split``: optional id list (a split JSON
    with ``split_key`` picking the list, or a text file with one id a line); default: every labelled image."""

    name: str
    root: Path
    split: str | None = None
    split_key: str = "test"


class SegmentSettings(StrictModel):
    """Segmentation settings shared by every arm (protocol: same network, steps, batch and lr).

    ``preset`` is a ``SegmentConfig`` YAML (e.g. ``configs/segment-cpu.yaml``); the named fields, when given,
    override it, and ``extra`` sets any other ``SegmentConfig`` field. Unset fields keep the preset's (or
    ``SegmentConfig``'s) value.
    """

    preset: Path | None = None
    network: str | None = None
    features: list[int] | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    val_interval: int | None = None
    extra: dict = Field(default_factory=dict)

    def merged(self) -> dict:
        """The complete shared ``SegmentConfig`` (as a dict): preset, then named fields, then ``extra``."""
        from lesionforge.segment.config import SegmentConfig

        over = {**self.model_dump(exclude={"preset", "extra"}, exclude_none=True), **self.extra}
        if self.preset is not None:
            return load_config(self.preset, SegmentConfig, over).model_dump(mode="json")
        return validate_config(SegmentConfig, over, "segment").model_dump(mode="json")


class FilterSettings(StrictModel):
    """The synthetic-pair filter: a validator trained on the labelled subset scores every sample.

    ``validator: latent`` (default): an autoencoder + latent segmenter (scores the latents, cheap per sample);
    ``pixel``: a small pixel-space segmenter (no autoencoder; the more discriminative of the two in
    ``benchmarks/results/validator-kvasir-seg-cpu.json``)."""

    validator: Literal["latent", "pixel"] = "latent"
    threshold: float | Literal["auto"] = "auto"
    auto_rule: Literal["contrast", "percentile"] = "contrast"  # how "auto" picks it (validate/filter.py)
    autoencoder_config: Path | None = None  # AutoencoderConfig YAML (default: its defaults), latent only
    autoencoder_overrides: dict = Field(default_factory=dict)
    validator_config: Path | None = None  # LatentSegmenterConfig / PixelSegmenterConfig YAML (default: defaults)
    validator_overrides: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _autoencoder_for_latent_only(self) -> FilterSettings:
        if self.validator == "pixel" and (self.autoencoder_config is not None or self.autoencoder_overrides):
            raise ValueError("filter: autoencoder settings are for `validator: latent` only")
        return self


class GeneratorSpec(StrictModel):
    """One generator, trained once per N (cached, shared by all arms and seeds that name it)."""

    method: SynthesisMethod
    config: Path | None = None  # GeneratorConfig YAML preset; None: ``overrides`` hold the whole config
    overrides: dict = Field(default_factory=dict)  # fields changed in that preset
    n_per_real: int = 3
    mask_source: Literal["jitter", "size"] = "jitter"  # real masks deformed, or size-controlled (small boosted)
    sampler: str | None = None  # None: the preset's sampling defaults
    sampling_steps: int | None = None
    guidance_scale: float | None = None
    batch_size: int = 16
    seed: int = 0
    use_unlabelled: bool = False  # train images without masks; recorded in the results when used
    filter: FilterSettings | None = None


class ArmSettings(StrictModel):
    """One arm. Only the training data differ between arms; the segmentation budget is shared."""

    name: str
    kind: ArmKind
    generator: str | None = None  # key into ``generators``, synthetic arms only
    ratio: float = 1.0  # synthetic:real per batch
    mixing: MixingMode = "ratio"
    alpha: float = 0.6
    patch_size: int = 16
    filtered: bool = True
    copy_paste_p: float = 0.5
    # synthetic arms: also copy-paste lesions onto the real images of each batch (are the two complementary?)
    copy_paste: bool = False
    # closed-loop arms: rounds, floor, the open-loop arm compared with (docs/loop.md)
    loop: LoopSettings | None = None

    @model_validator(mode="after")
    def _generator_for_synthetic(self) -> ArmSettings:
        if (self.kind in ("synthetic", "closed-loop")) != (self.generator is not None):
            raise ValueError(f"arm {self.name!r}: `generator` is required for synthetic and closed-loop arms "
                             "and only for them")
        if (self.kind == "closed-loop") != (self.loop is not None):
            raise ValueError(f"arm {self.name!r}: `loop` settings are required for closed-loop arms and only for them")
        if self.copy_paste and self.kind not in ("synthetic", "closed-loop"):
            raise ValueError(f"arm {self.name!r}: `copy_paste: true` is for synthetic arms; "
                             "use kind 'copy-paste' for real data with copy-paste")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_loop(self, handler):
        # arms without loop settings dump as before, so the config hashes of existing results do not change
        out = handler(self)
        if self.loop is None and isinstance(out, dict):
            out.pop("loop", None)
        return out

    @property
    def uses_copy_paste(self) -> bool:
        return self.kind == "copy-paste" or self.copy_paste


class ExperimentConfig(StrictModel):
    """A benchmark sweep: every N x seed x arm, evaluated on ``test`` and the transfer datasets."""

    dataset: DatasetSettings
    profile: ProfileName = "cpu"
    n_labelled: list[int]
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    segment: SegmentSettings = Field(default_factory=SegmentSettings)
    arms: list[ArmSettings]
    generators: dict[str, GeneratorSpec] = Field(default_factory=dict)
    baseline_arm: str = "baseline"
    miss_fraction: float = 0.1
    bootstrap_samples: int = 2000
    bootstrap_seed: int = 0
    output: Path = Path("runs")
    results_dir: Path = Path("results")
    transfer: list[TransferDataset] = Field(default_factory=list)
    grid_samples: int = 8  # synthetic and real pairs listed in the result for the report's sample grid
    threads: int | None = None  # torch intra-op threads for the sweep (None: torch's default)

    @property
    def resolution(self) -> int:
        return PROFILE_RESOLUTION[self.profile]

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique: {names}")
        if self.baseline_arm not in names:
            raise ValueError(f"baseline_arm {self.baseline_arm!r} is not one of the arms {names}")
        for a in self.arms:
            if a.generator is not None and a.generator not in self.generators:
                raise ValueError(f"arm {a.name!r}: unknown generator {a.generator!r}")
            # patch merging swaps patches between a real image and its twin: only edge-guided samples keep
            # the real image's anatomy, so only they are pixel-aligned twins
            if a.generator and a.mixing == "patch-merge" and self.generators[a.generator].method != "edge-guided":
                raise ValueError(f"arm {a.name!r}: mixing 'patch-merge' needs an edge-guided generator")
        if not self.n_labelled or not self.seeds:
            raise ValueError("n_labelled and seeds must not be empty")
        from lesionforge.loop.fairness import check_closed_loop_arms

        check_closed_loop_arms(self)
        return self

    def arm(self, name: str) -> ArmSettings:
        return next(a for a in self.arms if a.name == name)


def _resolve(p: Path | None, base: Path) -> Path | None:
    return None if p is None or p.is_absolute() else (base / p).resolve()


def load_experiment_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML; relative paths become absolute against its folder."""
    path = Path(path)
    cfg = load_config(path, ExperimentConfig, overrides)
    return resolve_paths(cfg, path.resolve().parent)


def resolve_paths(cfg: ExperimentConfig, base: Path) -> ExperimentConfig:
    """Return a copy of ``cfg`` with every relative path made absolute against ``base``."""
    ds = cfg.dataset
    if ds.split is not None and (ds.split.endswith(".json") or "/" in ds.split):
        ds = ds.model_copy(update={"split": str(_resolve(Path(ds.split), base) or ds.split)})
    ds = ds.model_copy(update={
        "root": _resolve(ds.root, base) or ds.root,
        "backgrounds_root": _resolve(ds.backgrounds_root, base) or ds.backgrounds_root,
        "subsets": {k: _resolve(v, base) or v for k, v in ds.subsets.items()},
    })
    gens = {}
    for name, g in cfg.generators.items():
        upd: dict = {"config": _resolve(g.config, base) or g.config}
        if g.filter is not None:
            upd["filter"] = g.filter.model_copy(update={
                "autoencoder_config": _resolve(g.filter.autoencoder_config, base) or g.filter.autoencoder_config,
                "validator_config": _resolve(g.filter.validator_config, base) or g.filter.validator_config,
            })
        gens[name] = g.model_copy(update=upd)
    transfer = [
        t.model_copy(update={
            "root": _resolve(t.root, base) or t.root,
            "split": str(_resolve(Path(t.split), base)) if t.split and t.split.endswith(".json") else t.split,
        })
        for t in cfg.transfer
    ]
    seg = cfg.segment.model_copy(update={"preset": _resolve(cfg.segment.preset, base) or cfg.segment.preset})
    return cfg.model_copy(update={
        "dataset": ds, "generators": gens, "transfer": transfer, "segment": seg,
        "output": _resolve(cfg.output, base) or cfg.output,
        "results_dir": _resolve(cfg.results_dir, base) or cfg.results_dir,
    })


def resolved_generator_config(cfg: ExperimentConfig, spec: GeneratorSpec):
    """The ``GeneratorConfig`` a generator entry trains with: its preset (or the kind's defaults) with the
    sweep's resolution, channels and dataset and the entry's overrides, every code default filled in."""
    from lesionforge.generate.config import GeneratorConfig, load_generator_config

    over = {"resolution": cfg.resolution, "image_channels": cfg.dataset.channels, "dataset": cfg.dataset.name,
            **spec.overrides}
    if spec.config is None:
        gcfg = validate_config(GeneratorConfig, {"kind": GENERATOR_KIND[spec.method], **over}, "generators.overrides")
    else:
        gcfg = load_generator_config(spec.config, over)
    if gcfg.kind != GENERATOR_KIND[spec.method]:
        raise ConfigError(f"{spec.config}: kind {gcfg.kind!r} does not fit method {spec.method!r}")
    return gcfg
