"""`lesionforge experiment ...` commands: run a benchmark sweep, rebuild its report, render README tables."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from lesionforge.errors import ConfigError
from lesionforge.experiment.locks import WAIT_TIMEOUT_S

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("run")
def run(
    config: Path = typer.Argument(..., help="Experiment YAML (see docs/experiments.md)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the output folder and start over."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip finished runs, continue unfinished ones."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write the Markdown report of each result."),
    threads: int = typer.Option(None, "--threads", help="torch threads of this worker (overrides the config)."),
    only_n: list[int] = typer.Option(None, "--n", help="Run only this N of the config (repeatable)."),
    only_arms: list[str] = typer.Option(
        None, "--arm",
        help="Run only this arm's runs (repeatable; e.g. the real-data arms while no generator is trained); the "
             "result is written once every run is finished, by any worker or session.",
    ),
    wait_timeout: float = typer.Option(
        WAIT_TIMEOUT_S / 60, "--wait-timeout", min=0.0,
        help="Minutes to wait for runs other workers hold, with nothing else left to do, before giving up.",
    ),
    executor: str = typer.Option(
        "local", "--executor", help="'local' (this process) or 'ray' (every unit of work as a Ray task)."
    ),
    address: str = typer.Option(None, "--address", help="Ray cluster address ('auto', HOST:PORT); default: local."),
    gpus_per_task: float = typer.Option(
        None, "--gpus-per-task", min=0.0, help="Ray: GPUs per task (default: 1 on a cluster with GPUs, else 0)."
    ),
    memory_per_task: float = typer.Option(None, "--memory-per-task", min=0.0, help="Ray: GiB of memory per task."),
    max_retries: int = typer.Option(3, "--max-retries", min=0, help="Ray: reruns of a failed or lost task."),
) -> None:
    """Run every N x seed x arm of CONFIG and write one result JSON per N (plus its report).

    Start it several times on the same CONFIG to share the sweep between workers (e.g. two workers with
    `--threads 1` on two cores): each run is claimed by one worker; the others skip it and wait for it
    (saying on what; a killed worker's runs are taken over). Every start and end of a run goes to
    `<output>/runs.log`. With `--executor ray` the units (generator training, synthesis shards, validator,
    segmentation runs) are Ray tasks on the cluster at `--address` (see docs/scale.md).
    """
    from lesionforge.experiment.config import load_experiment_config
    from lesionforge.experiment.report import write_report
    from lesionforge.experiment.runner import run_experiment

    cfg = load_experiment_config(config)
    if threads is not None:
        cfg = cfg.model_copy(update={"threads": threads})
    if executor == "ray":
        if only_arms:
            raise ConfigError("--arm: only with --executor local (Ray schedules every run of the sweep)")
        from lesionforge.experiment.ray_executor import run_experiment_ray
        from lesionforge.raycluster import TaskResources

        res = TaskResources(float(cfg.threads or 1), gpus_per_task, memory_per_task)
        runs = run_experiment_ray(cfg, address=address, resume=resume, overwrite=overwrite, only_n=only_n,
                                  resources=res, max_retries=max_retries)
    elif executor == "local":
        runs = run_experiment(cfg, resume=resume, overwrite=overwrite, only_n=only_n,
                              wait_timeout_s=wait_timeout * 60, only_arms=only_arms)
    else:
        raise ConfigError(f"--executor {executor!r}: choose 'local' or 'ray'")
    for path in runs:
        console.print(f"[green]result[/] {path}")
        if report:
            console.print(f"[green]report[/] {write_report(path)}")


@app.command("status")
def status(
    config: Path = typer.Argument(..., help="Experiment YAML (see docs/experiments.md)."),
    only_n: list[int] = typer.Option(None, "--n", help="Only this N of the config (repeatable)."),
) -> None:
    """Where the sweep of CONFIG stands: every run done, running (which worker), stale or pending (the step an
    unfinished one resumes from), and whether each N's result file is written from this config. Reads the output
    folder only: instant, and safe beside running workers."""
    from rich.table import Table

    from lesionforge.experiment.config import load_experiment_config
    from lesionforge.experiment.status import sweep_status

    cfg = load_experiment_config(config)
    steps = cfg.shared_segment().steps
    style = {"done": "green", "running": "yellow", "stale": "red", "pending": "dim"}
    for reg in sweep_status(cfg, only_n):
        table = Table(title=f"N = {reg.n}: {reg.count('done')}/{len(reg.runs)} done, {reg.count('running')} running, "
                            f"{reg.count('stale')} stale; result {reg.result} ({escape(str(reg.result_path))})")
        table.add_column("arm")
        for seed in cfg.seeds:
            table.add_column(f"seed {seed}")
        for arm in dict.fromkeys(r.arm for r in reg.runs):
            cells = []
            for r in (r for r in reg.runs if r.arm == arm):
                text = r.state + (f" {r.step}/{steps}" if r.step is not None and r.state != "done" else "")
                text += f" ({r.holder})" if r.holder else ""
                cells.append(f"[{style[r.state]}]{escape(text)}[/]")
            table.add_row(escape(arm), *cells)
        console.print(table)
        left = reg.seconds_left(steps)
        if left:
            from lesionforge.progress import duration_text

            ahead = (f"; generator {', '.join(reg.unbuilt)} not built yet, which adds its own time" if reg.unbuilt
                     else "")
            console.print(f"N = {reg.n}: about {duration_text(left)} of runs left with {max(1, reg.count('running'))} "
                          f"worker(s) (median run {duration_text(reg.median_run_s())}{ahead})", soft_wrap=True)


@app.command("report")
def report(
    result_json: Path = typer.Argument(..., help="A result JSON written by `experiment run`."),
    out_dir: Path = typer.Option(None, "-o", "--out", help="Folder for the .md and PNGs (default: beside the JSON)."),
) -> None:
    """Rebuild the Markdown + PNG report of RESULT_JSON from the JSON alone."""
    from lesionforge.experiment.report import write_report

    console.print(f"[green]report[/] {write_report(result_json, out_dir)}")


@app.command("table")
def table(result_jsons: list[Path] = typer.Argument(..., help="Result JSONs, in the order of the rows.")) -> None:
    """Print the README's headline Markdown table rendered from result JSONs.

    Files that are not sweep results (a shell glob may also match a gallery or benchmark JSON) are skipped
    with a note on stderr; it is an error only when none is left."""
    from lesionforge.errors import DataError
    from lesionforge.experiment.report import load_result, readme_table

    kept = []
    for path in result_jsons:
        try:
            load_result(path)
        except DataError as e:
            Console(stderr=True, soft_wrap=True, highlight=False).print(f"note: skipped {escape(str(e))}")
            continue
        kept.append(path)
    if not kept:
        raise DataError(result_jsons[0], "no experiment result file among the arguments")
    print(readme_table(kept))


@app.command("compare")
def compare(
    result_json: Path = typer.Argument(..., help="A result JSON written by `experiment run`."),
    arm: str = typer.Argument(..., help="The arm to compare."),
    ref: str = typer.Argument(..., help="The arm it is compared with."),
) -> None:
    """Paired difference ARM − REF over test images (and over seeds), recomputed from RESULT_JSON alone; for
    volumes also at the ends and in the middle of each test structure."""
    from lesionforge.experiment.report import diff_table, load_result, subset_diff_table
    from lesionforge.experiment.results import paired_from_result

    d = paired_from_result(load_result(result_json), arm, ref, result_json)
    print(diff_table({arm: d}, ref))
    if d.get("subsets"):
        print()
        print(subset_diff_table({"paired_diff": {arm: d}}, ref))


@app.command("pack")
def pack(
    config: Path = typer.Argument(..., help="Experiment YAML whose output folder holds the finished runs."),
    dest: Path = typer.Argument(..., help="JSON file to write (e.g. committed, to finish the sweep elsewhere)."),
) -> None:
    """Write every finished run of CONFIG's sweep into one JSON file, to resume the sweep on another machine."""
    from lesionforge.experiment.carry import pack_runs
    from lesionforge.experiment.config import load_experiment_config

    console.print(f"[green]packed[/] {pack_runs(load_experiment_config(config), dest)} runs into {escape(str(dest))}")


@app.command("unpack")
def unpack(
    config: Path = typer.Argument(..., help="The same experiment YAML (same settings) on this machine."),
    src: Path = typer.Argument(..., help="A file written by `experiment pack`."),
) -> None:
    """Put the runs packed in SRC into CONFIG's output folder; `experiment run` then does only the rest."""
    from lesionforge.experiment.carry import unpack_runs
    from lesionforge.experiment.config import load_experiment_config

    written, kept = unpack_runs(load_experiment_config(config), src)
    console.print(f"[green]unpacked[/] {written} runs ({kept} were already finished here and kept)")
