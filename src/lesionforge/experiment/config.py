"""The experiment configuration: one YAML describes a whole benchmark sweep.

The segmentation settings live in one block shared by every arm, so arms can only differ in the data they
train on (identical budgets by construction; an arm has no field that could change steps, batch or lr).
Relative paths in the YAML are resolved against the folder of the YAML file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_serializer, model_validator

from lesionforge.config import (
    PROFILE_RESOLUTION,
    LaterFields,
    ProfileName,
    StrictModel,
    load_config,
    resolve_preset,
    validate_config,
)
from lesionforge.errors import ConfigError
from lesionforge.loop.settings import LoopSettings
from lesionforge.presets import preset_path
from lesionforge.segment.config import CopyPasteConfig, MixConfig, SegmentConfig

ArmKind = Literal["baseline", "copy-paste", "synthetic", "closed-loop"]
SynthesisMethod = Literal["mask-conditioned", "joint", "inpaint-normal", "edge-guided", "copy-paste-backgrounds",
                          "union"]
#: not a diffusion generator: real lesions copy-pasted onto the lesion-free backgrounds the inpainting generator
#: paints into (:mod:`lesionforge.segment.pasted_set`), the set a diffusion arm must beat to show its own gain
PASTE_METHOD = "copy-paste-backgrounds"
#: not a generator either: the pairs of other generator entries (``of``) in one set, each entry's filter-kept pairs
#: (all of them for an entry without a filter) (:mod:`lesionforge.experiment.union_set`); e.g. diffusion pairs
#: plus real lesions pasted onto the same backgrounds: do the diffusion pairs add to cheap augmentation?
UNION_METHOD = "union"
#: the methods that train no generator of their own
NO_GENERATOR_METHODS = (PASTE_METHOD, UNION_METHOD)
#: arm kinds that train on a synthetic set (closed loop: one made in rounds, docs/loop.md)
SYNTHETIC_KINDS = ("synthetic", "closed-loop")
#: SegmentConfig fields an arm decides; everything else comes from the shared ``segment`` block.
ARM_FIELDS = ("mixing", "copy_paste")
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

    def resolve(self, where: str = "segment") -> SegmentConfig:
        """The complete shared ``SegmentConfig``: preset, then named fields, then ``extra``."""
        over = {**self.model_dump(exclude={"preset", "extra"}, exclude_none=True), **self.extra}
        return resolve_preset(self.preset, over, SegmentConfig, where)


class JitterSettings(LaterFields):
    """How real masks are drawn and deformed into new ones (``mask_source: jitter``): the keyword arguments of
    :func:`lesionforge.conditioning.masks.jitter_mask`; a field left unset keeps that function's default (up to
    30 degrees of rotation, scale 0.8-1.2, a shift of up to 0.1 of the image, an elastic warp). A structure bound
    to its anatomical place (a hippocampus in its MRI crop) keeps it with ``max_shift: 0`` and a small rotation.
    ``even``: every labelled mask is drawn equally often (each pass over the masks in a shuffled order), where by
    default each draw picks a mask at random (8 draws per pair on average: some masks drawn far more, some never).
    ``ends_weight`` (volume slices only): the masks of the slices at a structure's ends (the outer quarter at each
    end, as the results' ``structure-ends`` rows count them) drawn this many times as often as the others, for the
    same number of draws in all: the filter's best-of choice then has more draws of the thin end slices."""

    _omitted_when_none: ClassVar[tuple[str, ...]] = ("even", "ends_weight")
    max_rotate: float | None = Field(None, ge=0, le=180)
    scale: tuple[float, float] | None = None
    max_shift: float | None = Field(None, ge=0, le=0.5)
    elastic: bool | None = None
    even: bool | None = None
    ends_weight: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _scale_is_a_range(self) -> JitterSettings:
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"jitter.scale {list(self.scale)} must be [low, high] with 0 < low <= high")
        return self

    def kwargs(self) -> dict[str, Any]:
        """The deformation settings given, as ``jitter_mask`` keyword arguments (``even`` and ``ends_weight``,
        which choose the masks, are not)."""
        return self.model_dump(exclude_none=True, exclude={"even", "ends_weight"})


class FilterSettings(LaterFields):
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
    #: keep at most this many passing samples per labelled pair (the best by validator Dice); None: all that pass
    keep_best: int | None = Field(None, ge=1)
    #: True: keep_best's choice keeps the lesion size bands in the shares drawn (validate/filter.py best_by_band)
    keep_bands: bool | None = None
    #: instead of keep_best: keep this share of each group's draws, the best by validator Dice, where a group is a
    #: labelled pair, or for a size-controlled mask (no source pair) the size band it was drawn in
    #: (validate/filter.py source_quotas); None: keep_best's rule
    keep_share: float | None = Field(None, gt=0, le=1)
    _omitted_when_none: ClassVar[tuple[str, ...]] = ("keep_best", "keep_bands", "keep_share")

    @model_validator(mode="after")
    def _bands_need_keep_best(self) -> FilterSettings:
        if self.keep_bands and self.keep_best is None:
            raise ValueError("filter: keep_bands balances keep_best's choice over lesion sizes; set keep_best")
        if self.keep_share is not None and self.keep_best is not None:
            raise ValueError("filter: give keep_best or keep_share, not both")
        return self

    @model_validator(mode="after")
    def _autoencoder_for_latent_only(self) -> FilterSettings:
        if self.validator == "pixel" and (self.autoencoder_config is not None or self.autoencoder_overrides):
            raise ValueError("filter: autoencoder settings are for `validator: latent` only")
        return self


#: A generator entry's sampling settings (each None: the generator's own), refused where no generator draws
SAMPLING_FIELDS = ("sampler", "sampling_steps", "guidance_scale", "eta", "mask_guidance", "guidance_region")


class GeneratorSpec(LaterFields):
    """One generator, trained once per N (cached, shared by all arms and seeds that name it)."""

    _omitted_when_none = ("eta", "of", "repaint_share", "paste_strength", "jitter", "small_boost", "mask_guidance",
                          "guidance_region")

    method: SynthesisMethod
    config: Path | None = None  # GeneratorConfig YAML preset; None: ``overrides`` hold the whole config
    overrides: dict = Field(default_factory=dict)  # fields changed in that preset
    n_per_real: int = 3
    mask_source: Literal["jitter", "size"] = "jitter"  # real masks deformed, or size-controlled
    #: ``mask_source: size``: the two smaller size bands drawn this many times as often as the real areas'
    #: shares (conditioning/masks.py SizeSampler); None: 1, the real shares (each band with one pseudo-lesion)
    small_boost: float | None = Field(None, gt=0)
    sampler: str | None = None  # None: the preset's sampling defaults
    sampling_steps: int | None = None
    guidance_scale: float | None = None
    eta: float | None = Field(None, ge=0, le=1)  # DDIM's stochasticity (sampler ddim only)
    #: guidance weighs the mask too (generate.config.SamplingConfig.mask_guidance); None: the preset's (off)
    mask_guidance: bool | None = None
    guidance_region: int | None = Field(None, ge=0)  # guidance near the label only (SamplingConfig); None: everywhere
    batch_size: int = 16
    seed: int = 0
    use_unlabelled: bool = False  # train images without masks; recorded in the results when used
    filter: FilterSettings | None = None
    of: list[str] | None = None  # method ``union``: the generator entries whose pairs it joins
    #: method ``inpaint-normal``: the share of draws painted onto the labelled image their jittered mask comes
    #: from (its own lesion repainted inside the jittered mask joined with the real one), the rest onto the
    #: lesion-free backgrounds; None: all onto the backgrounds (generate/synthesize.py ``repaint_share``)
    repaint_share: float | None = Field(None, ge=0, le=1)
    #: method ``inpaint-normal``: every draw starts from a real lesion of a labelled pair pasted onto a lesion-free
    #: background (as the copy-paste-backgrounds method pastes it) and the generator re-draws lesion and border
    #: from it noised to this share of the schedule (SDEdit); the label is the pasted mask, so ``mask_source`` is
    #: unused. None: masks from ``mask_source`` painted from noise (generate/synthesize.py ``paste_strength``)
    paste_strength: float | None = Field(None, gt=0, le=1)
    #: ``mask_source: jitter``: how the real masks are deformed (None: ``jitter_mask``'s defaults)
    jitter: JitterSettings | None = None

    @model_validator(mode="after")
    def _paste_has_no_generator(self) -> GeneratorSpec:
        if self.jitter is not None and (self.mask_source != "jitter" or self.paste_strength is not None
                                        or self.method not in ("mask-conditioned", "inpaint-normal")):
            raise ValueError("jitter sets how real masks are deformed into new ones: it needs mask_source 'jitter', "
                             "a method drawing from masks ('mask-conditioned' or 'inpaint-normal') and no "
                             "paste_strength")
        if self.small_boost is not None and self.mask_source != "size":
            raise ValueError("small_boost sets how often size-controlled masks are small: it needs mask_source 'size'")
        if (self.method == UNION_METHOD) != (self.of is not None):
            raise ValueError("`of` (the generator entries to join) is for method 'union', and required by it")
        if self.repaint_share is not None and (self.method != "inpaint-normal" or self.mask_source != "jitter"):
            raise ValueError("repaint_share repaints the labelled image a jittered mask comes from: it needs method "
                             "'inpaint-normal' and mask_source 'jitter'")
        if self.paste_strength is not None and (self.method != "inpaint-normal" or self.repaint_share is not None):
            raise ValueError("paste_strength re-draws real lesions pasted onto the backgrounds: it needs method "
                             "'inpaint-normal' and no repaint_share")
        if self.method == UNION_METHOD:
            given = [k for k in ("config", *SAMPLING_FIELDS, "filter")
                     if getattr(self, k) is not None] + (["overrides"] if self.overrides else []) \
                + (["use_unlabelled"] if self.use_unlabelled else [])
            if given:
                raise ValueError(f"method {UNION_METHOD!r} joins the sets of `of` and makes none: remove "
                                 f"{', '.join(given)} (each joined entry keeps its own settings and filter)")
            if len(self.of) < 2 or len(set(self.of)) != len(self.of):
                raise ValueError(f"method {UNION_METHOD!r}: `of` must name two or more different generator entries")
        if self.method == PASTE_METHOD:
            keys = ("config", *SAMPLING_FIELDS)
            given = [k for k in keys if getattr(self, k) is not None]
            if given or self.use_unlabelled or self.mask_source != "jitter":
                bad = given + (["use_unlabelled"] if self.use_unlabelled else []) + (
                    ["mask_source"] if self.mask_source != "jitter" else [])
                raise ValueError(f"method {PASTE_METHOD!r} trains no generator: remove {', '.join(bad)} "
                                 "(its `overrides` are copy-paste settings: scale, feather_sigma, fov_threshold)")
            paste_config(self)  # its overrides must be copy-paste settings
        return self


class ArmSettings(LaterFields):
    """One arm. Only the training data differ between arms; the segmentation budget is shared.

    ``mixing`` (synthetic arms; the segment stage's own :class:`MixConfig`, its ``mode`` defaults to ``ratio``
    here): how synthetic pairs join the real ones. ``copy_paste`` (the stage's :class:`CopyPasteConfig` without
    ``enabled``, which the arm's kind decides): the settings of a copy-paste arm (default: the shared block's,
    probability 0.5), or on a synthetic arm, copy-paste on the real images of each batch as well (are the two
    complementary?). The keys an arm gives override the shared ``segment`` block's ``copy_paste``."""

    name: str
    kind: ArmKind
    generator: str | None = None  # key into ``generators``, synthetic arms only
    mixing: MixConfig | None = None
    filtered: bool = True
    copy_paste: CopyPasteConfig | None = None
    # closed-loop arms: rounds, max_gain, the open-loop arm compared with (docs/loop.md)
    loop: LoopSettings | None = None
    #: measure this arm only at these N of the sweep (None: at every N), e.g. an arm that lost at one N and is not
    #: worth its runs at the others; its numbers at that N stay in that N's result
    n_labelled: list[int] | None = None
    _omitted_when_none: ClassVar[tuple[str, ...]] = ("loop", "n_labelled")

    def measured_at(self, n: int) -> bool:
        """Whether the sweep runs this arm at N labelled."""
        return self.n_labelled is None or n in self.n_labelled

    @model_validator(mode="before")
    @classmethod
    def _synthetic_mixes_by_ratio(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") in SYNTHETIC_KINDS:
            mixing = data.get("mixing") if data.get("mixing") is not None else {}
            if isinstance(mixing, dict) and "mode" not in mixing:
                data = {**data, "mixing": {"mode": "ratio", **mixing}}
        return data

    @model_validator(mode="after")
    def _fields_fit_the_kind(self) -> ArmSettings:
        synthetic = self.kind in SYNTHETIC_KINDS
        if synthetic != (self.generator is not None):
            raise ValueError(f"arm {self.name!r}: `generator` is required for synthetic and closed-loop arms "
                             "and only for them")
        if (self.kind == "closed-loop") != (self.loop is not None):
            raise ValueError(f"arm {self.name!r}: `loop` settings are required for closed-loop arms and only for them")
        if synthetic and self.mixing.mode == "none":
            raise ValueError(f"arm {self.name!r}: a synthetic arm needs a mixing mode other than 'none'")
        if self.kind == "closed-loop" and self.mixing.synthetic_pixel_filter is not None:
            raise ValueError(f"arm {self.name!r}: mixing.synthetic_pixel_filter is for synthetic arms; the closed "
                             "loop's rounds draw new pairs that no filter scored")
        if not synthetic and self.mixing is not None:
            raise ValueError(f"arm {self.name!r}: `mixing` is for synthetic arms")
        if self.copy_paste is not None and self.kind == "baseline":
            raise ValueError(f"arm {self.name!r}: `copy_paste` is for copy-paste and synthetic arms; "
                             "use kind 'copy-paste' for real data with copy-paste")
        if self.copy_paste is not None and "enabled" in self.copy_paste.model_fields_set:
            raise ValueError(f"arm {self.name!r}: `copy_paste.enabled` is decided by the arm's kind; leave it out")
        if self.copy_paste is not None and self.copy_paste.synthetic_donors and self.kind != "synthetic":
            raise ValueError(f"arm {self.name!r}: `copy_paste.synthetic_donors` takes lesions from the arm's "
                             "synthetic pairs; it is for synthetic arms")
        return self

    @field_serializer("copy_paste")
    def _given_keys_only(self, v: CopyPasteConfig | None) -> dict | None:
        # the keys the arm gave (what overrides the shared block), not ``enabled: false`` from the model default
        return None if v is None else v.model_dump(mode="json", exclude_unset=True)

    @property
    def uses_copy_paste(self) -> bool:
        return self.kind == "copy-paste" or self.copy_paste is not None

    @property
    def paste(self) -> CopyPasteConfig:
        """The arm's copy-paste settings (defaults when it gives none)."""
        return self.copy_paste or CopyPasteConfig()


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
    # the ``segment`` block resolved (its preset read once, not at every poll of a waiting worker), with the
    # block it was resolved from: a copy with another block resolves again
    _shared_segment: tuple[SegmentSettings, SegmentConfig] | None = PrivateAttr(None)

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
        for name, spec in self.generators.items():
            if spec.method != UNION_METHOD:
                continue
            bad = [p for p in spec.of if p not in self.generators or self.generators[p].method == UNION_METHOD]
            if bad:
                raise ValueError(f"generator {name!r}: `of` names {bad}, which are not generator entries of this "
                                 "config (a union joins generators or pasted sets, not other unions)")
        for a in self.arms:
            if a.generator is not None and a.generator not in self.generators:
                raise ValueError(f"arm {a.name!r}: unknown generator {a.generator!r}")
            if a.generator and a.kind == "closed-loop" and self.generators[a.generator].method in NO_GENERATOR_METHODS:
                raise ValueError(f"arm {a.name!r}: a closed loop needs a diffusion generator to steer, not "
                                 f"{self.generators[a.generator].method!r}")
            # patch merging swaps patches between a real image and its twin: only edge-guided samples keep
            # the real image's anatomy, so only they are pixel-aligned twins
            if a.generator and a.mixing.mode == "patch-merge" and self.generators[a.generator].method != "edge-guided":
                raise ValueError(f"arm {a.name!r}: mixing 'patch-merge' needs an edge-guided generator")
        if not self.n_labelled or not self.seeds:
            raise ValueError("n_labelled and seeds must not be empty")
        for a in self.arms:
            if a.n_labelled is None:
                continue
            if a.name == self.baseline_arm:
                raise ValueError(f"arm {a.name!r}: the baseline arm is measured at every N (drop its n_labelled)")
            # an N the sweep does not run is allowed: a config narrowed to one N (``--n``, the screen) keeps its arms
            if not a.n_labelled or min(a.n_labelled) < 1:
                raise ValueError(f"arm {a.name!r}: n_labelled {a.n_labelled} must list N values of at least 1")
        from lesionforge.loop.fairness import check_closed_loop_arms

        check_closed_loop_arms(self)
        return self

    def is_copy_paste_reference(self, arm: ArmSettings) -> bool:
        """A copy-paste arm: real lesions copy-pasted, onto real images or onto the backgrounds (no diffusion)."""
        return arm.kind == "copy-paste" or (arm.generator is not None and self._pasted_only(arm.generator))

    def _pasted_only(self, name: str) -> bool:
        spec = self.generators[name]
        return spec.method == PASTE_METHOD or (spec.method == UNION_METHOD and all(map(self._pasted_only, spec.of)))

    def arm(self, name: str) -> ArmSettings:
        return next(a for a in self.arms if a.name == name)

    def arms_at(self, n: int) -> list[ArmSettings]:
        """The arms measured at N labelled, in the config's order (see :attr:`ArmSettings.n_labelled`)."""
        return [a for a in self.arms if a.measured_at(n)]

    def shared_segment(self, where: str = "segment") -> SegmentConfig:
        """The ``SegmentConfig`` every arm shares (preset + named fields + ``extra``), read once."""
        if self._shared_segment is None or self._shared_segment[0] != self.segment:
            self._shared_segment = (self.segment, self.segment.resolve(where))
        return self._shared_segment[1]

    def run_segment_config(self, arm: ArmSettings, seed: int, where: str = "segment") -> SegmentConfig:
        """The segmentation settings of one run, validated: the shared ``segment`` block (its preset read once)
        plus the arm's data options only.

        Arms differ in ``mixing`` (how synthetic pairs enter the batch) and in copy-paste; network, features,
        steps, batch size, lr, augmentation and validation interval are the same for every arm by construction.
        The resolution comes from the profile. ``where`` names the config a failure came from."""
        out = self.shared_segment().model_dump(mode="json")
        out.update(resolution=self.resolution, seed=seed)
        # a real-data arm's mixing is only its mode: the other MixConfig fields stay unset, so that the record form
        # (``segment_config_for``) reads {"mode": "none"} as in every run record written so far
        out["mixing"] = arm.mixing.model_dump(mode="json") if arm.kind in SYNTHETIC_KINDS else {"mode": "none"}
        given = arm.copy_paste.model_dump(mode="json", exclude_unset=True) if arm.copy_paste is not None else {}
        out["copy_paste"] = {**out["copy_paste"], **given, "enabled": arm.uses_copy_paste, "prob": arm.paste.prob}
        return validate_config(SegmentConfig, out, where)


def _resolve(p: Path | None, base: Path) -> Path | None:
    return None if p is None or p.is_absolute() else (base / p).resolve()


def _resolve_config(p: Path | None, base: Path) -> Path | None:
    """A config file path: beside the experiment YAML if there, else the packaged preset of that name."""
    return None if p is None else preset_path(p, base).resolve()


def load_experiment_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML (or the packaged preset of that name, e.g. ``demo.yaml``); relative
    paths become absolute against its folder. Every run's ``SegmentConfig`` (the shared block with each arm's
    options) is built and validated here, so a bad value fails now, naming the file and key, not after the
    generators have trained."""
    path = preset_path(path)
    cfg = resolve_paths(load_config(path, ExperimentConfig, overrides), path.resolve().parent)
    cfg.shared_segment(f"{path}: segment")
    for i, arm in enumerate(cfg.arms):
        cfg.run_segment_config(arm, cfg.seeds[0], where=f"{path}: arms.{i} ({arm.name!r}) with the segment block")
    return cfg


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
        upd: dict = {"config": _resolve_config(g.config, base)}
        if g.filter is not None:
            upd["filter"] = g.filter.model_copy(update={
                "autoencoder_config": _resolve_config(g.filter.autoencoder_config, base),
                "validator_config": _resolve_config(g.filter.validator_config, base),
            })
        gens[name] = g.model_copy(update=upd)
    transfer = [
        t.model_copy(update={
            "root": _resolve(t.root, base) or t.root,
            "split": str(_resolve(Path(t.split), base)) if t.split and t.split.endswith(".json") else t.split,
        })
        for t in cfg.transfer
    ]
    seg = cfg.segment.model_copy(update={"preset": _resolve_config(cfg.segment.preset, base)})
    return cfg.model_copy(update={
        "dataset": ds, "generators": gens, "transfer": transfer, "segment": seg,
        "output": _resolve(cfg.output, base) or cfg.output,
        "results_dir": _resolve(cfg.results_dir, base) or cfg.results_dir,
    })


def paste_config(spec: GeneratorSpec):
    """The copy-paste settings of a ``copy-paste-backgrounds`` set (its ``overrides`` over the defaults)."""
    return resolve_preset(None, {**spec.overrides, "enabled": True}, CopyPasteConfig, "generators.overrides")


def uses_unlabelled(cfg: ExperimentConfig, name: str) -> bool:
    """Whether generator entry ``name`` (any of a union's parts) trained on train images without their masks."""
    spec = cfg.generators[name]
    if spec.method == UNION_METHOD:
        return any(uses_unlabelled(cfg, p) for p in spec.of)
    return spec.use_unlabelled


def set_recipe(cfg: ExperimentConfig, spec: GeneratorSpec) -> dict:
    """What makes a synthetic set's pairs, for cache keys: the generator's effective config, or the copy-paste
    settings of a pasted set."""
    if spec.method == PASTE_METHOD:
        return {"copy_paste": paste_config(spec).model_dump(mode="json")}
    if spec.method == UNION_METHOD:  # its parts' own keys make its cache key (runner.synthetic_key)
        return {"union": {p: set_recipe(cfg, cfg.generators[p]) for p in spec.of}}
    return resolved_generator_config(cfg, spec).model_dump(mode="json")


def resolved_generator_config(cfg: ExperimentConfig, spec: GeneratorSpec):
    """The ``GeneratorConfig`` a generator entry trains with: its preset (or the kind's defaults) with the
    sweep's resolution, channels and dataset and the entry's overrides, every code default filled in."""
    from lesionforge.generate.config import GeneratorConfig

    if spec.method in NO_GENERATOR_METHODS:
        raise ConfigError(f"method {spec.method!r} has no generator config")
    over = {"resolution": cfg.resolution, "image_channels": cfg.dataset.channels, "dataset": cfg.dataset.name,
            **spec.overrides}
    if spec.config is None:  # no preset: the overrides hold the whole config, of the method's kind
        over = {"kind": GENERATOR_KIND[spec.method], **over}
    gcfg = resolve_preset(spec.config, over, GeneratorConfig, "generators.overrides")
    if gcfg.kind != GENERATOR_KIND[spec.method]:
        raise ConfigError(f"{spec.config}: kind {gcfg.kind!r} does not fit method {spec.method!r}")
    return gcfg
