"""The Medical Segmentation Decathlon's ``dataset.json``: label names and modality of a volume dataset.

The Decathlon (and nnU-Net, which reuses its layout) ships ``imagesTr/`` and ``labelsTr/`` beside a
``dataset.json`` naming the labels (``{"0": "background", "1": "Anterior", ...}``) and the modality
(``{"0": "MRI"}``). lesionforge pairs the volumes by file name (:mod:`lesionforge.data.volumes`); this file only
tells what the labels mean and how to normalise intensities: z-score for MRI (arbitrary scanner units), a fixed
window for CT (Hounsfield units carry meaning), as nnU-Net does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lesionforge.errors import DataError

Normalisation = Literal["window", "zscore"]
DATASET_JSON = "dataset.json"
_MR_NAMES = {"MRI", "MR", "T1", "T1W", "T1GD", "T2", "T2W", "FLAIR", "ADC", "DWI", "PD"}


class DecathlonInfo(BaseModel):
    """What ``dataset.json`` says about a volume dataset (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str | None = None
    modality: dict[str, str] = Field(default_factory=dict)  # channel -> "MRI", "CT", ...
    labels: dict[int, str] = Field(default_factory=dict)  # label value -> name
    num_training: int | None = Field(default=None, alias="numTraining")

    @property
    def is_mri(self) -> bool:
        """True when any channel is an MR sequence (the Decathlon writes "MRI", "T2", "FLAIR", "ADC" ...)."""
        return any(m.strip().upper() in _MR_NAMES for m in self.modality.values())

    @property
    def foreground_labels(self) -> dict[int, str]:
        """Label value -> name without the background (0)."""
        return {k: v for k, v in self.labels.items() if k != 0}


def read_decathlon_info(root: str | Path) -> DecathlonInfo | None:
    """``root/dataset.json`` parsed, or None when the dataset has none; a malformed file names itself."""
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        return None
    try:
        return DecathlonInfo.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as e:
        raise DataError(path, f"not a valid Decathlon dataset.json ({str(e).splitlines()[0]})") from e


def default_normalisation(root: str | Path) -> Normalisation:
    """``zscore`` when ``dataset.json`` names an MRI modality, else ``window`` (CT, unknown, no file)."""
    info = read_decathlon_info(root)
    return "zscore" if info is not None and info.is_mri else "window"
