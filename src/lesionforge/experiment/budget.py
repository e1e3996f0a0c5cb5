"""Per-run segmentation settings: the shared budget plus the arm's data options, nothing else.

This is where "identical budgets for every arm" is enforced: an arm can only choose how synthetic pairs
enter the batch (``mixing``) and whether copy-paste is on; everything else comes from the shared block.
"""

from __future__ import annotations

from typing import Any

from lesionforge.experiment.config import ARM_FIELDS, ArmSettings, ExperimentConfig


def segment_config_for(cfg: ExperimentConfig, arm: ArmSettings, seed: int) -> dict[str, Any]:
    """:meth:`ExperimentConfig.run_segment_config` in the form a run record keeps (JSON, only the fields that were
    set)."""
    return cfg.run_segment_config(arm, seed).model_dump(mode="json", exclude_unset=True)


def budget_of(segment_config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's settings that must be identical across arms (everything but the arm fields)."""
    return {k: v for k, v in segment_config.items() if k not in ARM_FIELDS and k != "seed"}
