"""The seam between the runner and the stages it drives.

The runner only orchestrates (what to run, in which order, what is cached, what is finished); the work
itself goes through a :class:`Stages` object with three methods. :class:`~lesionforge.experiment.
real_stages.LesionforgeStages` calls the real data, generator, filter and segmentation stages; tests
inject small fakes to check orchestration, resume and budgets without training anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from lesionforge.data.arrays import PairArrays
    from lesionforge.data.splits import BenchmarkSplit
    from lesionforge.experiment.config import ArmSettings, ExperimentConfig, GeneratorSpec


@dataclass
class ExperimentData:
    """Everything a sweep reads, preprocessed to the profile resolution.

    ``pool`` holds every labelled ``train`` image (the low-data subsets select from it); ``unlabelled`` the
    other train images usable without their masks; ``backgrounds`` lesion-free images for inpainting;
    ``transfer`` other datasets scored unchanged; ``subsets`` named id lists scored separately.
    """

    split: BenchmarkSplit  # the fixed split (lesionforge.data.splits): train/val/test, low-data subsets, backgrounds
    pool: PairArrays
    val: PairArrays
    test: PairArrays
    backgrounds: PairArrays | None = None
    transfer: dict[str, PairArrays] = field(default_factory=dict)
    subsets: dict[str, list[str]] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)  # where the data came from, for the result file

    def labelled(self, n: int) -> PairArrays:
        """The N labelled training pairs of the low-data regime ``n``."""
        return self.pool.select_ids(self.split.low_data(n))

    def background_ids(self) -> list[str]:
        return [] if self.backgrounds is None else list(self.backgrounds.ids)

    def unlabelled(self, n: int) -> PairArrays | None:
        """Train images outside the labelled subset (to be used without masks), or None if there are none."""
        keep = set(self.split.low_data(n))
        idx = [i for i, s in enumerate(self.pool.ids) if s not in keep]
        return self.pool.subset(idx) if idx else None


@dataclass
class SyntheticSet:
    """The synthetic pairs made for one (N, generator): all of them, and those the filter kept."""

    manifest: Path
    filtered_manifest: Path | None
    info: dict[str, Any]  # generator/filter settings, acceptance rate, timings

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": str(self.manifest),
            "filtered_manifest": None if self.filtered_manifest is None else str(self.filtered_manifest),
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyntheticSet:
        fm = d.get("filtered_manifest")
        return cls(Path(d["manifest"]), None if fm is None else Path(fm), dict(d.get("info", {})))


class Stages(Protocol):
    """What the runner needs done. Every method must be deterministic given its inputs."""

    def load_data(self, cfg: ExperimentConfig) -> ExperimentData:
        """Read the dataset, split, backgrounds, transfer sets and subsets at ``cfg.resolution``."""
        ...

    def prepare_synthetic(
        self, cfg: ExperimentConfig, name: str, spec: GeneratorSpec, n: int, data: ExperimentData, work_dir: Path
    ) -> SyntheticSet:
        """Train (or reuse) generator ``name`` on the N labelled pairs, synthesize, filter; write in ``work_dir``."""
        ...

    def run_arm(
        self,
        cfg: ExperimentConfig,
        arm: ArmSettings,
        segment_config: dict[str, Any],
        n: int,
        data: ExperimentData,
        synthetic: SyntheticSet | None,
        run_dir: Path,
    ) -> dict[str, Any]:
        """Train the segmenter of one (N, arm, seed) with ``segment_config`` (checkpointing in ``run_dir`` and
        resuming from it), select on ``val``, evaluate once on ``test`` and the transfer sets.

        Returns the :class:`~lesionforge.experiment.records.RunRecord` fields other than n/arm/seed/
        segment_config/timings.
        """
        ...
