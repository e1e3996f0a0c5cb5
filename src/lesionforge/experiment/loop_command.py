"""``lesionforge loop CONFIG``: the closed-loop arm's runs of an experiment config, on their own.

The runs are exactly the sweep's (same folders ``<output>/n<N>/<arm>/seed<S>``, same claims and records), so a
later ``lesionforge experiment run CONFIG`` finds them finished and only adds the other arms; the open-loop arm's
generator (and filter validator) are trained and cached first, as the sweep would.
"""

from __future__ import annotations

from lesionforge.errors import ConfigError, LesionforgeError
from lesionforge.experiment.config import ExperimentConfig
from lesionforge.experiment.records import RunRecord


def closed_loop_arm(cfg: ExperimentConfig, name: str | None = None):
    """The closed-loop arm called ``name``, or the config's only one."""
    arms = [a for a in cfg.arms if a.kind == "closed-loop"]
    if name is not None:
        arms = [a for a in arms if a.name == name]
    if len(arms) != 1:
        every = [a.name for a in cfg.arms if a.kind == "closed-loop"]
        which = f"no closed-loop arm named {name!r}" if name else f"{len(arms)} closed-loop arms (name one with --arm)"
        raise ConfigError(f"the config has {which}; closed-loop arms: {every}")
    return arms[0]


def run_loop(cfg: ExperimentConfig, arm: str | None = None, only_n: list[int] | None = None,
             seeds: list[int] | None = None, stages=None) -> list[RunRecord]:
    """Run (or resume) the closed-loop arm for every selected N and seed; returns their run records."""
    from lesionforge.experiment.locks import Busy
    from lesionforge.experiment.runner import SyntheticCache, ensure_run, prepare_sweep

    chosen = closed_loop_arm(cfg, arm)
    unknown = sorted(set(seeds or []) - set(cfg.seeds))
    if unknown:
        raise ConfigError(f"seed {unknown} is not among the config's seeds {cfg.seeds}")
    n_values, stages, data = prepare_sweep(cfg, stages, True, False, only_n)
    records = []
    for n in (n for n in n_values if chosen.measured_at(n)):
        cache = SyntheticCache(cfg, stages, data, n)
        for seed in seeds or cfg.seeds:
            try:
                records.append(ensure_run(cfg, stages, data, n, chosen, seed,
                                          lambda c=cache: c.get(chosen.generator)))
            except Busy as busy:
                raise LesionforgeError(
                    f"{busy.lock}: N={n} {busy} is being run by another worker; try again later") from None
    return records


def round_table(records: list[RunRecord]) -> list[dict]:
    """One row per (N, seed, round): targeted bands, pairs kept, val failure rate by band of its segmenter."""
    rows = []
    for r in records:
        loop = r.loop or {}
        stages = [*loop.get("rounds", []), {"round": "final", "diagnosis": loop.get("final_diagnosis", {})}]
        for rd in stages:
            d = rd.get("diagnosis") or {}
            rows.append({"n": r.n_labelled, "seed": r.seed, "round": rd["round"],
                         "targeted": ",".join((rd.get("targeted") or {}).get("bands", [])) or "-",
                         "kept": rd.get("n_kept"), "generated": rd.get("n_generated"),
                         "failure_by_band": d.get("failure_rate_by_band", {}),
                         "failure_rate": (d.get("overall") or {}).get("failure_rate")})
    return rows
