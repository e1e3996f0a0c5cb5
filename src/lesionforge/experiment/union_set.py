"""A synthetic set that joins the pairs of other sets of the sweep (generator method ``union``).

Each joined set contributes the pairs its own arms would train on: those its filter kept, or all of them when it
has no filter. The files are linked (copied where links are not possible) into the union's own folder, so its
manifest names only files inside that folder like every other set's, and a part's folder is never written to.
Made in seconds, so a stopped build simply starts over in its own folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lesionforge.data.manifest import Provenance, Sample, read_set, write_manifest
from lesionforge.experiment.stages import SyntheticSet

FOLDER = "synthetic"


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


def write_union_set(parts: dict[str, tuple[SyntheticSet, bool]], work_dir: Path) -> SyntheticSet:
    """Join ``parts`` (entry name -> (its set, whether it has a filter)) into ``work_dir/synthetic``.

    Sample ids become ``<entry>-<id>`` (unique across parts); each row's provenance keeps its own and gains
    ``union_part``. Returns the set (its info: how many pairs each part gave)."""
    out = Path(work_dir) / FOLDER
    rows: list[Sample] = []
    counts: dict[str, int] = {}
    for name, (s, has_filter) in parts.items():
        manifest = s.filtered_manifest if has_filter and s.filtered_manifest is not None else s.manifest
        taken = read_set(manifest, origin="synthetic", kept_only=has_filter)
        counts[name] = len(taken)
        for row in taken:
            files = {}
            for f in [row.image, *row.masks]:
                rel = Path(name) / Path(f).parent.name / Path(f).name
                _place(Path(f), out / rel)
                files[f] = rel.as_posix()
            prov = Provenance.model_validate({**(row.provenance.model_dump() if row.provenance else {}),
                                              "union_part": name})
            rows.append(row.model_copy(update={"id": f"{name}-{row.id}", "image": files[row.image],
                                               "masks": [files[m] for m in row.masks], "provenance": prov}))
    manifest = write_manifest(out / "manifest.jsonl", rows)
    total = len(rows)
    return SyntheticSet(manifest, None, {"method": "union", "parts": counts, "n_generated": total, "n_kept": total})
