"""What a newcomer trips on: version, one naming scheme, README commands that work as written, split names
outside this repository, and a demo console that says what is going on (issue 18, item 7)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import typer
from rich.console import Console
from test_data_builders import write_pairs
from test_experiment_runner import FakeStages, cfg  # noqa: F401  (fixture)
from typer.testing import CliRunner

from lesionforge import __version__
from lesionforge.cli import app
from lesionforge.data.splits import load_benchmark_split
from lesionforge.errors import DataError
from lesionforge.experiment.runner import run_experiment
from lesionforge.progress import StageProgress, progress_label

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
TRAIN = ("generator", "autoencoder", "validator", "extractor")


def _commands(group, prefix: tuple[str, ...] = ()):
    """(path, command) of every leaf command (Typer ships its own click: groups are told by ``commands``)."""
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_version_flag_prints_the_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"lesionforge {__version__}"


def test_train_commands_are_a_group_and_the_old_names_still_work():
    root = typer.main.get_command(app)
    train = root.commands["train"]
    assert sorted(train.commands) == sorted(TRAIN)
    for name in TRAIN:
        old = root.commands[f"train-{name}"]
        assert old.hidden and not train.commands[name].hidden
        assert [p.name for p in old.params] == [p.name for p in train.commands[name].params]
    top = CliRunner().invoke(app, ["--help"]).stdout
    assert "train-generator" not in top and "train " in top
    res = CliRunner().invoke(app, ["train-extractor", "--help"])  # old spelling: still a working command
    assert res.exit_code == 0 and "--out" in res.stdout


def test_every_output_option_is_spelled_o_out():
    root = typer.main.get_command(app)
    outs = [(path, p) for path, cmd in _commands(root) for p in cmd.params if p.name in ("out", "out_dir", "output")]
    assert len(outs) >= 15
    for path, p in outs:
        assert "-o" in p.opts and "--out" in p.opts, (path, p.opts)


def test_old_output_spelling_still_works(tmp_path):
    write_pairs(tmp_path / "d", ["a", "b"])
    res = CliRunner().invoke(app, ["data", "manifest", str(tmp_path / "d"), "--output", str(tmp_path / "m.jsonl")])
    assert res.exit_code == 0 and (tmp_path / "m.jsonl").is_file()


def test_readme_table_glob_skips_files_that_are_not_sweep_results(tmp_path):
    shutil.copy(RESULTS / "demo-n16-tiny.json", tmp_path / "demo-n16-tiny.json")
    (tmp_path / "generator-x-n32-cpu.json").write_text(json.dumps({"generator": "inpaint"}), encoding="utf-8")
    files = sorted(str(p) for p in tmp_path.glob("*-n[0-9]*-*.json"))
    assert len(files) == 2  # the glob matches both, as the README's does
    res = CliRunner().invoke(app, ["experiment", "table", *files])
    assert res.exit_code == 0, res.output
    assert "| demo | 16 | tiny | baseline |" in res.stdout and "generator-x" not in res.stdout
    assert "note: skipped" in res.stderr and "generator-x-n32-cpu.json" in res.stderr
    res = CliRunner().invoke(app, ["experiment", "table", str(tmp_path / "generator-x-n32-cpu.json")])
    assert isinstance(res.exception, DataError)


def test_split_names_work_outside_this_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("LESIONFORGE_SPLITS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks" / "splits").mkdir(parents=True)
    (tmp_path / "benchmarks" / "splits" / "mine.json").write_text(
        json.dumps({"train": ["a"], "val": ["b"], "test": ["c"]}), encoding="utf-8")
    assert load_benchmark_split("mine").val == ["b"]
    with pytest.raises(DataError) as e:
        load_benchmark_split("theirs")
    assert "give the path of its JSON file" in str(e.value) and "LESIONFORGE_SPLITS" in str(e.value)


def test_progress_names_its_arm_and_prints_plain_lines_off_a_terminal():
    buf = io.StringIO()
    with progress_label("N=16 seed=0 baseline"), StageProgress(console=Console(file=buf)) as bar:
        task = bar.add_task("segment", total=20)
        for step in range(1, 21):
            bar.update(task, completed=step, description=f"segment loss {1 / step:.3f}")
    lines = buf.getvalue().splitlines()
    assert all(line.startswith("N=16 seed=0 baseline | segment") for line in lines)
    assert 10 <= len(lines) <= 12 and lines[-1].startswith("N=16 seed=0 baseline | segment loss 0.050: 20/20 (100 %)")


def test_sweep_labels_each_stage_bar_with_its_arm(cfg, demo_arrays, capsys):  # noqa: F811
    seen: list[str] = []

    class Recording(FakeStages):
        def run_arm(self, cfg, arm, segment_config, n, data, synthetic, run_dir):
            with StageProgress(console=Console(file=io.StringIO())) as bar:
                task = bar.add_task("segment", total=1)
                seen.append(bar.tasks[task].description)
            return super().run_arm(cfg, arm, segment_config, n, data, synthetic, run_dir)

    cfg = cfg.model_copy(update={"n_labelled": [4]})
    run_experiment(cfg, Recording(demo_arrays), progress=True)
    assert seen[0].startswith("N=4 seed=") and seen[0].endswith(" | segment")
    assert {s.split(" | ")[0].split(" ", 2)[2] for s in seen} == {a.name for a in cfg.arms}
    # the sweep's own bar, off a terminal: a line when each run starts and one when it is done
    lines = capsys.readouterr().out.splitlines()
    runs = len(cfg.seeds) * len(cfg.arms)
    assert lines[-1].startswith("N=4 seed=") and f": {runs}/{runs} (100 %)" in lines[-1]
    assert len([line for line in lines if f"/{runs} (" in line]) == 1 + 2 * runs


def test_demo_prints_its_table_unwrapped_and_says_numbers_vary(tmp_path, monkeypatch):
    import lesionforge.pipeline_demo as demo

    result = tmp_path / "demo-n16-tiny.json"
    shutil.copy(RESULTS / "demo-n16-tiny.json", result)
    monkeypatch.setattr("lesionforge.experiment.runner.run_experiment", lambda config, resume: [result])
    monkeypatch.setattr("lesionforge.experiment.report.write_report", lambda p: p.with_suffix(".md"))
    buf = io.StringIO()
    monkeypatch.setattr(demo, "console", Console(file=buf, width=80))
    demo.run_demo(tmp_path / "out")
    text = buf.getvalue()
    rows = [line for line in text.splitlines() if line.startswith("| demo |")]
    assert len(rows) == 3 and all(line.endswith("`demo-n16-tiny.json` |") for line in rows)
    assert "vary from run to run" in text
