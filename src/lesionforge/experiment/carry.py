"""Carry a sweep's finished runs to another machine: one JSON file out, the same runs back in.

A sweep of the `cpu` profile takes 5-7 core-hours, more than one working session on a 2-core machine, and the
next session may start on a fresh machine where the output folder is gone. ``pack_runs`` writes every finished
run record of a config's output folder into one small JSON (no checkpoints, no images: about 30 kB a run);
``unpack_runs`` writes them back into a (new) output folder of the same config, so ``experiment run`` resumes
and does only the runs that are left. Synthetic sets and generators are not carried: the runner rebuilds them
from the config (seeded), which costs the generator's training time again; the pack holds each set's content
fingerprint, and a rebuilt set records in its ``info.carried`` (so in the result file's ``generators``) whether
it is the very set the carried runs trained on (:mod:`lesionforge.experiment.set_fingerprint`).

Checks, so that carried runs can never mix into another sweep: the pack stores the config hash (every setting
that shapes the numbers) and unpacking into a config with another hash is refused; every record is validated
as a :class:`RunRecord` and must name an N, arm and seed of the config; a run already finished in the target
folder is kept as it is (nothing there is overwritten).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lesionforge.errors import ConfigError, DataError
from lesionforge.experiment.config import ExperimentConfig
from lesionforge.experiment.records import RunRecord, append_run_log, read_record, record_path, write_record
from lesionforge.experiment.results import config_hash
from lesionforge.experiment.runner import prepare_output
from lesionforge.experiment.set_fingerprint import note_carried, sweep_fingerprints
from lesionforge.utils import write_json_atomic

KIND = "lesionforge-sweep-runs"


def pack_runs(cfg: ExperimentConfig, dest: str | Path) -> int:
    """Write every finished run of ``cfg``'s output folder to ``dest`` (JSON, atomically); returns the count."""
    records = [read_record(p).model_dump(mode="json")
               for n in cfg.n_labelled for arm in cfg.arms_at(n) for seed in cfg.seeds
               if (p := record_path(cfg.output, n, arm.name, seed)).is_file()]
    write_json_atomic(Path(dest), {"kind": KIND, "dataset": cfg.dataset.name, "profile": cfg.profile,
                                   "config_hash": config_hash(cfg), "sets": sweep_fingerprints(cfg.output),
                                   "runs": records})
    return len(records)


def unpack_runs(cfg: ExperimentConfig, src: str | Path) -> tuple[int, int]:
    """Write the runs packed in ``src`` into ``cfg``'s output folder (made or resumed as a sweep folder);
    returns ``(written, already there)``. A pack of another config or a malformed one is refused before anything
    is written, with an error naming ``src``."""
    src = Path(src)
    pack = _read_pack(src)
    if pack["config_hash"] != config_hash(cfg):
        raise ConfigError(f"{src}: packed from a config with other settings (hash {pack['config_hash']}, this "
                          f"config {config_hash(cfg)}); its runs cannot be mixed into this sweep")
    records = []
    for k, raw in enumerate(pack["runs"]):
        try:
            rec = RunRecord.model_validate(raw)
        except ValidationError as e:
            raise DataError(src, f"run {k} is not a valid run record ({e.errors()[0]['msg']})") from e
        if (rec.n_labelled not in cfg.n_labelled or rec.seed not in cfg.seeds
                or rec.arm not in {a.name for a in cfg.arms_at(rec.n_labelled)}):
            raise DataError(src, f"run {k} (N={rec.n_labelled}, {rec.arm}, seed {rec.seed}) is not a run of this "
                                 "config")
        records.append(rec)
    prepare_output(cfg, resume=True, overwrite=False)
    note_carried(cfg.output, pack.get("sets") or {})
    written = 0
    for rec in records:
        path = record_path(cfg.output, rec.n_labelled, rec.arm, rec.seed)
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        write_record(path, rec)
        append_run_log(cfg.output, "carried", rec.n_labelled, rec.arm, rec.seed)  # the log says where it came from
        written += 1
    return written, len(records) - written


def _read_pack(src: Path) -> dict[str, Any]:
    if not src.is_file():
        raise DataError(src, "file not found")
    try:
        pack = json.loads(src.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(src, f"not valid JSON ({e})") from e
    if not isinstance(pack, dict) or pack.get("kind") != KIND or not isinstance(pack.get("runs"), list):
        raise DataError(src, "not a pack of sweep runs (written by `lesionforge experiment pack`)")
    return pack
