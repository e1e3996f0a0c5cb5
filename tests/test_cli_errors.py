"""Plain errors: what a user gets on bad input, at the CLI entry and from the data commands (issue 18, item 5)."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest
from test_data_builders import demo_pairs, save, write_pairs
from typer.testing import CliRunner

from lesionforge.cli import app, error_line, main
from lesionforge.config import load_config
from lesionforge.data.checks import check_dataset
from lesionforge.errors import ConfigError, DataError
from lesionforge.presets import PRESETS_DIR
from lesionforge.segment.config import SegmentConfig

CONFIGS = PRESETS_DIR


def _run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``lesionforge ARGS`` through the console-script entry point: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["lesionforge", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


def _images_only(root: Path, n: int = 3) -> Path:
    for i, img in enumerate(demo_pairs(n)[0]):
        save(root / "images" / f"i{i}.png", img)
    return root


def test_oserror_at_cli_entry_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    write_pairs(tmp_path / "data", ["a", "b"])
    (tmp_path / "afile").write_text("a file, not a folder")
    code, err = _run_main(monkeypatch, capsys, "data", "manifest", str(tmp_path / "data"),
                          "-o", str(tmp_path / "afile" / "m.jsonl"))
    assert code == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and str(tmp_path / "afile") in err

    def denied(*_a, **_k):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/read-only/m.jsonl")

    monkeypatch.setattr("lesionforge.data.manifest.write_manifest", denied)
    code, err = _run_main(monkeypatch, capsys, "data", "manifest", str(tmp_path / "data"), "-o",
                          str(tmp_path / "m.jsonl"))
    assert code == 1 and err.strip() == "error: /data/read-only/m.jsonl: Permission denied"
    assert error_line(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"


def test_lesionforge_errors_stay_on_one_line_however_long(tmp_path, monkeypatch, capsys):
    code, err = _run_main(monkeypatch, capsys, "data", "check", str(tmp_path / ("a-rather-long-folder-name-" * 4)))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "dataset folder not found" in err


def test_config_typo_names_the_key_and_the_closest_valid_one(tmp_path):
    cfg = tmp_path / "seg.yaml"
    cfg.write_text((CONFIGS / "segment-tiny.yaml").read_text(encoding="utf-8") + "stpes: 10\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, SegmentConfig)
    assert str(e.value) == f"{cfg}: unknown key 'stpes' (did you mean 'steps'?)"
    exp = tmp_path / "exp.yaml"
    exp.write_text("dataset: {name: demo, demo: {n: 8}, rooot: x}\nn_labelled: [4]\nseeds: [0]\n"
                   "segment: {steps: 2, bacth_size: 2}\narms: [{name: baseline, kind: baseline}]\n", encoding="utf-8")
    from lesionforge.experiment.config import load_experiment_config

    with pytest.raises(ConfigError) as e:
        load_experiment_config(exp)
    msg = str(e.value)
    assert "unknown key 'dataset.rooot' (did you mean 'root'?)" in msg
    assert "unknown key 'segment.bacth_size' (did you mean 'batch_size'?)" in msg
    assert "Extra inputs" not in msg and "pydantic" not in msg and "\n" not in msg


def test_data_check_calls_out_a_folder_of_images_without_masks(tmp_path):
    root = _images_only(tmp_path / "photos")
    report = check_dataset(root)
    assert [i.file for i in report.notices["no_masks"]] == [str(root)]
    assert "no masks" in report.notices["no_masks"][0].message
    out = CliRunner().invoke(app, ["data", "check", str(root), "--json"])
    assert json.loads(out.stdout)["counts"]["no_masks"] == 1


def test_segment_train_says_no_masks_instead_of_asking_for_a_validation_set(tmp_path):
    root = _images_only(tmp_path / "photos")
    res = CliRunner().invoke(app, ["segment", "train", str(CONFIGS / "segment-tiny.yaml"), str(root),
                                   "-o", str(tmp_path / "run")])
    assert isinstance(res.exception, DataError) and "no masks" in str(res.exception)
    assert not (tmp_path / "run").exists()


def test_data_check_reports_zero_images_as_an_error(tmp_path):
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "masks").mkdir()
    report = check_dataset(tmp_path / "d")
    assert not report.ok and report.errors["no_images"][0].message == "no images found"
    assert CliRunner().invoke(app, ["data", "check", str(tmp_path / "d")]).exit_code == 1


def test_data_check_names_empty_splits_and_split_ids_absent_from_the_dataset(tmp_path):
    write_pairs(tmp_path / "d", ["a", "b", "c"])
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a", "b", "ghost"], "val": [], "test": ["c"]}), encoding="utf-8")
    report = check_dataset(tmp_path / "d", splits=split)
    assert [i.message for i in report.notices["empty_split"]] == ["the val split is empty"]
    missing = report.notices["split_ids_missing"]
    assert len(missing) == 1 and missing[0].message.startswith("1 of 3 train ids are not in the dataset")


def test_data_check_warns_of_symlinks_leading_outside_the_folder(tmp_path):
    write_pairs(tmp_path / "d", ["a", "b"])
    outside = save(tmp_path / "elsewhere" / "x.png", demo_pairs(1)[0][0])
    (tmp_path / "d" / "images" / "x.png").symlink_to(outside)
    save(tmp_path / "d" / "masks" / "x.png", demo_pairs(1)[1][0] * 255)
    report = check_dataset(tmp_path / "d")
    links = report.notices["link_outside_folder"]
    assert [i.id for i in links] == ["x"] and str(outside) in links[0].message


def test_data_split_and_fingerprint_stop_with_a_message(tmp_path):
    photos = _images_only(tmp_path / "photos")
    runner = CliRunner()
    res = runner.invoke(app, ["data", "split", str(photos), "-o", str(tmp_path / "s.json")])
    assert isinstance(res.exception, DataError) and "nothing to split" in str(res.exception)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    res = runner.invoke(app, ["data", "fingerprint", str(empty)])
    assert isinstance(res.exception, DataError) and "no images to fingerprint" in str(res.exception)
    write_pairs(tmp_path / "d", ["a", "b", "c", "e"])
    res = runner.invoke(app, ["data", "split", str(tmp_path / "d"), "-o", str(tmp_path / "s.json"),
                              "--fractions", "0.5,0.6,0.1"])
    assert isinstance(res.exception, ConfigError) and "summing to 1" in str(res.exception)
    res = runner.invoke(app, ["data", "split", str(tmp_path / "d"), "-o", str(tmp_path / "s.json"),
                              "--fractions", "0.5,0.5"])
    assert res.exit_code == 2 and "fractions must be 'train,val,test'" in res.output
    res = runner.invoke(app, ["data", "split", str(tmp_path / "d"), "-o", str(tmp_path / "s.json"),
                              "--fractions", "1,0,0"])
    assert res.exit_code == 0 and "warning (empty_split): the val split is empty" in res.output


def test_a_failed_atomic_write_names_the_file_asked_for_not_its_temporary(tmp_path, monkeypatch, capsys):
    from lesionforge.utils import write_text_atomic

    with pytest.raises(OSError) as e:  # /proc takes no new files: mkstemp fails
        write_text_atomic("/proc/lesionforge-test.jsonl", "x")
    assert e.value.filename == "/proc/lesionforge-test.jsonl"

    def full_disk(src, *_a, **_k):  # the write of the temporary file fails, naming it
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    write_pairs(tmp_path / "data", ["a"])
    monkeypatch.setattr("lesionforge.utils.os.replace", full_disk)
    code, err = _run_main(monkeypatch, capsys, "data", "manifest", str(tmp_path / "data"), "-o",
                          str(tmp_path / "m.jsonl"))
    assert code == 1 and err.strip() == f"error: {tmp_path / 'm.jsonl'}: No space left on device"
