"""The packaged presets: generator, autoencoder, validator and segmentation configs, and the demo's experiment.

A config path is read relative to its caller (the working folder, or the experiment YAML that names it); when
no file is there and the path is a bare file name or names a ``configs/`` folder (where the presets lived in
the source checkout), the packaged preset of that file name is used. So ``segment-cpu.yaml``,
``configs/segment-cpu.yaml`` and a benchmark's ``../../configs/segment-cpu.yaml`` work from any folder, also
where lesionforge is installed without its source checkout; a missing ``my-presets/segment-cpu.yaml`` stays
an error rather than quietly becoming the packaged file.
"""

from __future__ import annotations

from pathlib import Path

#: Folder of the packaged preset YAML files (shipped as package data, see pyproject.toml).
PRESETS_DIR = Path(__file__).resolve().parent


def preset_names() -> list[str]:
    """File names of the packaged presets, sorted."""
    return sorted(p.name for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(path: str | Path, base: str | Path | None = None) -> Path:
    """The config file ``path`` names: ``path`` itself (relative to ``base`` when given and ``path`` is
    relative) if it is a file, else the packaged preset of that file name for a bare name or a relative
    ``configs/`` path, else ``path`` unchanged (the caller reports it missing)."""
    path = Path(path)
    given = path if path.is_absolute() or base is None else Path(base) / path
    if given.is_file() or path.is_absolute() or path.parent.name not in ("", "configs"):
        return given
    packaged = PRESETS_DIR / path.name
    return packaged if path.suffix in (".yaml", ".yml") and packaged.is_file() else given
