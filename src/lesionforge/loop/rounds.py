"""The K-round loop: train, diagnose, plan, synthesize + filter, and again; then the final segmenter.

Folder of one loop (claimed as a ``closed loop`` output)::

    loop.json                     settings, budget split, meta; rewritten after every round
    round<r>/segmenter/           the segmenter diagnosed in round r (real + the sets of rounds < r)
    round<r>/diagnosis.json|.png  its diagnosis on val and on the images without masks
    round<r>/conditions.json      the draw plan made from it (what round r targets)
    round<r>/synthetic/           the pairs drawn (manifest rows carry loop_round and the targets)
    round<r>/filtered.jsonl       the filter's verdicts (filtered arms)
    round<r>/round.json           written last: round r is finished
    final/diagnosis.json|.png     the final segmenter's diagnosis

A stopped loop restarts at the round it was in: finished rounds (``round.json``) are read back, the unfinished
one resumes its segmenter from its checkpoint and its synthesis from the manifest (both resumable stages).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lesionforge.errors import CheckpointError, ConfigError
from lesionforge.loop.conditions import plan_conditions
from lesionforge.loop.diagnose import write_diagnosis
from lesionforge.loop.settings import LoopSettings
from lesionforge.outputs import claim_output, is_inside
from lesionforge.utils import write_json_atomic

STATE = "loop.json"
ROUND_DONE = "round.json"


class LoopWorker(Protocol):
    """The stages a loop drives (the experiment binds them to the real ones; tests may fake them)."""

    real_masks: np.ndarray  # the labelled lesion masks (N, H, W): the real band shares and shape bank

    def train(self, sets: list[dict[str, Any]], out: Path, final: bool) -> Any:
        """Train (resuming in ``out``) on the real pairs plus the kept pairs of ``sets`` (round records);
        returns a run with ``best_checkpoint``."""
        ...

    def diagnose(self, run: Any, out: Path) -> dict[str, Any]:
        """The diagnosis of ``run``'s segmenter (:func:`lesionforge.loop.diagnose.diagnose`)."""
        ...

    def synthesize(self, round_index: int, plan: dict[str, Any], diagnosis: dict[str, Any], n: int,
                   out: Path) -> dict[str, Any]:
        """Draw ``n`` pairs by ``plan`` into ``out`` and filter them; returns ``manifest`` (the kept pairs' file,
        inside ``out``), ``filtered`` (bool), ``n_generated``, ``n_kept`` and anything else to record."""
        ...


def split_budget(total: int, rounds: int) -> list[int]:
    """The synthetic budget of each round: ``total`` split as evenly as possible (earlier rounds get the rest)."""
    if total < rounds:
        raise ConfigError(f"a synthetic budget of {total} pairs cannot be split over {rounds} rounds")
    return [total // rounds + (r < total % rounds) for r in range(rounds)]


def _summary(d: dict[str, Any]) -> dict[str, Any]:
    """The part of a diagnosis a round record keeps: overall and per band."""
    return {"overall": d["overall"],
            "failure_rate_by_band": {b: g["failure_rate"] for b, g in d["by_band"].items()},
            "lesions_by_band": {b: g["lesions"] for b, g in d["by_band"].items()}}


def _read_round(rdir: Path) -> dict[str, Any]:
    rec = json.loads((rdir / ROUND_DONE).read_text(encoding="utf-8"))
    manifest = (rdir / rec["manifest"]).resolve()
    if not is_inside(manifest, rdir.resolve()):  # a crafted record must not point the loop elsewhere
        raise CheckpointError(f"{rdir / ROUND_DONE}: names {rec['manifest']}, which is not inside {rdir}; the file is "
                              "damaged or was edited: use a new output folder")
    return {**rec, "manifest_path": str(manifest)}


def _check_state(folder: Path, state: dict[str, Any]) -> None:
    path = folder / STATE
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in ("settings", "budgets", "meta") if before.get(k) != state[k])
        if changed:
            raise ConfigError(f"{path}: this loop ran with other {', '.join(changed)}; use a new output folder")


def run_rounds(folder: Path, settings: LoopSettings, total: int, worker: LoopWorker, *, final_dir: Path,
               meta: dict[str, Any] | None = None, log=print) -> tuple[Any, dict[str, Any]]:
    """Run (or resume) the loop in ``folder``; the final segmenter trains in ``final_dir`` on every round's set.
    Returns ``(final run, summary)``; the summary holds every round's record and the final diagnosis."""
    folder = claim_output(folder, "closed loop", resume=True)
    budgets = split_budget(total, settings.rounds)
    state = {"settings": settings.model_dump(mode="json"), "budgets": budgets, "meta": meta or {}, "rounds": []}
    _check_state(folder, state)
    write_json_atomic(folder / STATE, state)
    sets: list[dict[str, Any]] = []
    for r, n in enumerate(budgets):
        rdir = folder / f"round{r}"
        if (rdir / ROUND_DONE).is_file():
            sets.append(_read_round(rdir))
            continue
        if rdir.is_dir():
            log(f"closed loop: resuming round {r} in {rdir}")
        t0 = time.perf_counter()
        run = worker.train(sets, rdir / "segmenter", final=False)
        t1 = time.perf_counter()
        diagnosis = worker.diagnose(run, rdir)
        write_diagnosis(diagnosis, rdir, f"round {r}:")
        plan = plan_conditions(diagnosis, worker.real_masks, settings)
        write_json_atomic(rdir / "conditions.json", {"round": r, "n_requested": n, **plan})
        t2 = time.perf_counter()
        made = worker.synthesize(r, plan, diagnosis, n, rdir)
        manifest = Path(made.pop("manifest")).resolve()
        rec = {
            "round": r, "n_requested": n, "trained_on_rounds": [s["round"] for s in sets],
            "segmenter_best_val_mdice": getattr(run, "best_val_mdice", None),
            "targeted": {k.removeprefix("targeted_"): plan[k] for k in plan if k.startswith("targeted_")},
            "band_shares": plan["band_shares"], "real_band_shares": plan["real_band_shares"],
            "diagnosis": _summary(diagnosis), "manifest": str(manifest.relative_to(rdir.resolve())), **made,
            "timings": {"train_s": round(t1 - t0, 3), "diagnose_s": round(t2 - t1, 3),
                        "synthesize_s": round(time.perf_counter() - t2, 3)},
        }
        write_json_atomic(rdir / ROUND_DONE, rec)
        log(f"closed loop: round {r} targeted bands {plan['targeted_bands'] or 'none'}; "
            f"{rec['n_kept']} of {rec['n_generated']} pairs kept")
        sets.append(_read_round(rdir))
    run = worker.train(sets, final_dir, final=True)
    final = worker.diagnose(run, folder / "final")
    write_diagnosis(final, folder / "final", "final:")
    rounds = [{k: v for k, v in s.items() if k != "manifest_path"} for s in sets]
    summary = {
        "rounds": rounds, "budgets": budgets, "n_generated": sum(s["n_generated"] for s in sets),
        "n_kept": sum(s["n_kept"] for s in sets),
        "targeted_bands": sorted({b for s in sets for b in s["targeted"]["bands"]}),
        "final_diagnosis": _summary(final), "settings": state["settings"], **(meta or {}),
    }
    write_json_atomic(folder / STATE, {**state, "rounds": rounds, "summary": summary})
    return run, summary
