"""`lesionforge loop CONFIG`: run the closed-loop arm of an experiment config (docs/loop.md)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _rate(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def register(app: typer.Typer) -> None:
    @app.command("loop")
    def loop(
        config: Path = typer.Argument(..., help="Experiment YAML with a closed-loop arm (see docs/loop.md)."),
        arm: str = typer.Option(None, "--arm", help="The closed-loop arm to run (default: the config's only one)."),
        only_n: list[int] = typer.Option(None, "--n", help="Run only this N of the config (repeatable)."),
        seeds: list[int] = typer.Option(None, "--seed", help="Run only this seed of the config (repeatable)."),
        threads: int = typer.Option(None, "--threads", help="torch threads (overrides the config)."),
    ) -> None:
        """Train, diagnose, synthesize what the segmenter misses, retrain, for K rounds; resumable.

        Runs the closed-loop arm's (N, seed) runs of CONFIG exactly as `lesionforge experiment run` would (same
        folders, so the sweep reuses them); each round's diagnosis (JSON + plot), plan and set stay in
        `<output>/n<N>/<arm>/seed<S>/loop/round<r>/`.
        """
        from lesionforge.experiment.config import load_experiment_config
        from lesionforge.experiment.loop_command import round_table, run_loop

        cfg = load_experiment_config(config)
        if threads is not None:
            cfg = cfg.model_copy(update={"threads": threads})
        records = run_loop(cfg, arm, only_n, seeds)
        table = Table(title="closed loop: val failure rate (missed or under-segmented) by band, per round")
        for col in ("N", "seed", "round", "targeted", "kept/generated", "small", "medium", "large", "all"):
            table.add_column(col)
        for row in round_table(records):
            f = row["failure_by_band"]
            kept = "-" if row["kept"] is None else f"{row['kept']}/{row['generated']}"
            table.add_row(str(row["n"]), str(row["seed"]), str(row["round"]), row["targeted"], kept,
                          *(_rate(f.get(b)) for b in ("small", "medium", "large")), _rate(row["failure_rate"]))
        console.print(table)
        from lesionforge.experiment.records import run_dir

        for r in records:
            console.print(f"N={r.n_labelled} seed={r.seed}: test mDice {r.mdice:.3f}, miss rate {_rate(r.miss_rate)}; "
                          f"rounds in {run_dir(cfg.output, r.n_labelled, r.arm, r.seed) / 'loop'}")
