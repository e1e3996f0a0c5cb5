"""The demo: procedural data -> input checks -> fingerprint -> the experiment runner on the demo preset
(generator training, synthesis, latent filter, segmentation arms with identical budgets, paired statistics,
report). Everything is trained for real, at 32 px and small sizes so it finishes in minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from lesionforge.outputs import claim_output
from lesionforge.presets import PRESETS_DIR
from lesionforge.utils import write_json_atomic

console = Console()

#: Printed under the result table: a user comparing with the README (or with a colleague's run) must not
#: mistake run-to-run spread for a bug or for an effect.
VARIATION_NOTE = (
    "Note: these numbers vary from run to run (thread count, CPU and library versions change floating-point "
    "sums, so the trained models differ a little) and the demo has 16 test images and 2 seeds: read the "
    "confidence intervals, not the means. The demo shows that the pipeline works; it is not a benchmark "
    "(see docs/results.md)."
)


def demo_config_path() -> Path:
    """The packaged demo preset (``lesionforge/presets/demo.yaml``)."""
    return PRESETS_DIR / "demo.yaml"


def run_demo(out: str | Path, overwrite: bool = False, seed: int = 0, resume: bool = False) -> dict:
    """Run the demo into ``out``; returns the summary also written to ``out/summary.json``."""
    from lesionforge.data.checks import check_dataset
    from lesionforge.data.demo import write_demo_dataset
    from lesionforge.data.fingerprint import fingerprint
    from lesionforge.data.readers import read_dataset
    from lesionforge.experiment.config import load_experiment_config
    from lesionforge.experiment.report import readme_table, write_report
    from lesionforge.experiment.runner import run_experiment

    out = claim_output(Path(out).resolve(), "demo", overwrite=overwrite, resume=resume)
    cfg = load_experiment_config(
        demo_config_path(),
        {"output": str(out), "results_dir": str(out / "results"), "dataset": {"demo": {"seed": seed}}},
    )
    demo = cfg.dataset.demo
    data_root = out / "data"  # where the runner looks for the demo data
    if not (data_root / "manifest.jsonl").is_file():
        write_demo_dataset(data_root, demo.n, demo.size, demo.normal_fraction, demo.seed)
    console.rule("[bold]1. input checks")
    report = check_dataset(data_root)  # the lesion pairs (images/ + masks/)
    normals = check_dataset(data_root / "normal", layout="images")  # the lesion-free backgrounds
    console.print({"pairs": report.counts(), "backgrounds": normals.counts()})
    console.rule("[bold]2. dataset fingerprint")
    fp = fingerprint(read_dataset(data_root / "manifest.jsonl"))
    console.print(fp.model_dump(mode="json") if hasattr(fp, "model_dump") else fp)
    console.rule("[bold]3. generator -> synthesis -> filter -> segmentation arms")
    results = run_experiment(cfg, resume=True)
    reports = [str(write_report(p)) for p in results]
    table = readme_table(results)
    console.rule("[bold]4. result")
    console.print(table, soft_wrap=True, markup=False, highlight=False)  # a Markdown table: never wrapped
    console.print(VARIATION_NOTE, soft_wrap=True)
    summary = {
        "data": str(data_root),
        "check": {"pairs": report.counts(), "backgrounds": normals.counts()},
        "results": [str(p) for p in results],
        "reports": reports, "table": table,
    }
    write_json_atomic(out / "summary.json", summary)
    console.print(f"[green]demo finished[/]: summary {out / 'summary.json'}, report {reports[0]}")
    return summary
