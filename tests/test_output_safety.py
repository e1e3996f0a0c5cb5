"""Output folders: a command writes, resumes or overwrites only a folder it made (its marker), never a user's
folder, a dataset or another command's output; paths read from state files stay inside their run folder;
written files get the umask's permissions; a resumed run says from where."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_generate_common import pairs, tiny_cfg

from lesionforge.data.arrays import PairArrays
from lesionforge.data.demo import write_demo_dataset
from lesionforge.errors import CheckpointError, OverwriteError
from lesionforge.generate.build import build_generator
from lesionforge.generate.config import SamplingConfig
from lesionforge.generate.synthesize import synthesize
from lesionforge.generate.trainer import train_generator
from lesionforge.outputs import MARKER, claim_output
from lesionforge.segment.config import SegmentConfig
from lesionforge.segment.train import train_segmenter
from lesionforge.utils import write_json_atomic, write_text_atomic


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("a user's file", encoding="utf-8")
    return path


def _generator(path: Path) -> Path:
    torch.manual_seed(0)
    build_generator(tiny_cfg("joint")).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def seg_data(demo_arrays):
    a = PairArrays(demo_arrays.images, demo_arrays.masks, np.ones(len(demo_arrays.ids), bool), demo_arrays.ids,
                   [None] * len(demo_arrays.ids))
    return a.subset(list(range(8))), a.subset(list(range(8, 12)))


def _seg_cfg(**kw) -> SegmentConfig:
    base = {"features": (8, 8, 16, 16, 32, 8), "resolution": 32, "steps": 2, "batch_size": 2, "val_interval": 1,
            "warmup_steps": 1}
    return SegmentConfig(**{**base, **kw})


# 1. output folders


def test_synthesize_refuses_a_real_dataset_folder_even_with_overwrite(tmp_path):
    dataset = write_demo_dataset(tmp_path / "dataset", n=6, size=32, seed=0)
    before = _tree(dataset)
    gen = _generator(tmp_path / "g")
    for overwrite in (True, False):  # without --overwrite resume is on: it must not write into images/ either
        with pytest.raises(OverwriteError, match="dataset.*not a synthetic set"):
            synthesize(gen, dataset, 2, sampling=SamplingConfig(steps=2), overwrite=overwrite, progress=False)
    assert _tree(dataset) == before  # not one real image deleted, not one synthetic image added


def test_train_generator_refuses_a_non_empty_folder_it_did_not_make(demo_arrays, tmp_path):
    folder = _user_folder(tmp_path / "mine")
    with pytest.raises(OverwriteError, match="notes.txt"):  # resume is on by default: it used to write anyway
        train_generator(tiny_cfg("mask2image"), pairs(demo_arrays), folder, progress=False)
    assert _tree(folder) == {"notes.txt": b"a user's file"}


def test_segment_train_refuses_a_non_empty_folder_it_did_not_make(seg_data, tmp_path):
    folder = _user_folder(tmp_path / "mine")
    for overwrite in (False, True):
        with pytest.raises(OverwriteError, match="not a segmentation run"):
            train_segmenter(_seg_cfg(), *seg_data, folder, overwrite=overwrite, resume=not overwrite)
    assert _tree(folder) == {"notes.txt": b"a user's file"}


def test_demo_overwrite_refuses_a_folder_it_did_not_make(tmp_path):
    from typer.testing import CliRunner

    from lesionforge.cli import app

    folder = _user_folder(tmp_path / "mine")
    result = CliRunner().invoke(app, ["demo", "--out", str(folder), "--overwrite"])
    assert isinstance(result.exception, OverwriteError) and "not a demo" in str(result.exception)
    assert _tree(folder) == {"notes.txt": b"a user's file"}


def test_experiment_overwrite_refuses_a_folder_it_did_not_make(tmp_path):
    from lesionforge.experiment.config import load_experiment_config
    from lesionforge.experiment.runner import run_experiment

    configs = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
    folder = _user_folder(tmp_path / "mine")
    cfg = load_experiment_config(configs / "smoke.yaml", {"output": str(folder), "results_dir": str(tmp_path / "r")})
    with pytest.raises(OverwriteError, match="not an experiment sweep"):
        run_experiment(cfg, stages=object(), overwrite=True, progress=False)
    assert _tree(folder) == {"notes.txt": b"a user's file"}


def test_overwrite_deletes_only_an_own_folder_and_another_commands_folder_is_refused(tmp_path):
    own = claim_output(tmp_path / "set", "synthetic set")
    (own / "images").mkdir()
    (own / "images" / "a.png").write_bytes(b"x")
    with pytest.raises(OverwriteError, match="pass --overwrite"):
        claim_output(own, "synthetic set")  # neither resume nor overwrite: say which flag
    assert claim_output(own, "synthetic set", resume=True) == own and (own / "images" / "a.png").is_file()
    claim_output(own, "synthetic set", overwrite=True)
    assert sorted(p.name for p in own.iterdir()) == [MARKER]
    assert json.loads((own / MARKER).read_text(encoding="utf-8"))["kind"] == "synthetic set"
    (own / "manifest.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(OverwriteError, match="holds a synthetic set"):
        claim_output(own, "segmentation run", overwrite=True)
    assert (own / "manifest.jsonl").is_file()


def test_a_run_of_an_older_version_is_adopted_only_when_recognisable(tmp_path):
    old = tmp_path / "old"
    (old / "images").mkdir(parents=True)
    (old / "synthesis.json").write_text("{}", encoding="utf-8")
    (old / "manifest.jsonl").write_text("", encoding="utf-8")
    (old / ".manifest.jsonl.k2x9.jsonl").write_text("", encoding="utf-8")  # an atomic write cut short by a kill
    assert claim_output(old, "synthetic set", resume=True) == old  # its own state file and nothing else
    assert json.loads((old / MARKER).read_text(encoding="utf-8"))["kind"] == "synthetic set"
    (tmp_path / "mixed").mkdir()
    for name in ("synthesis.json", "notes.txt"):
        (tmp_path / "mixed" / name).write_text("{}", encoding="utf-8")
    with pytest.raises(OverwriteError, match="notes.txt"):
        claim_output(tmp_path / "mixed", "synthetic set", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "mixed").iterdir()) == ["notes.txt", "synthesis.json"]


# 2. paths read from state files


def test_segment_train_refuses_a_last_json_naming_a_folder_outside_its_run(seg_data, tmp_path):
    victim = _user_folder(tmp_path / "victim")
    run = claim_output(tmp_path / "run", "segmentation run")
    for name in ("../victim", str(victim), "last-0000001/../../victim"):
        (run / "last.json").write_text(json.dumps({"folder": name, "step": 1}), encoding="utf-8")
        with pytest.raises(CheckpointError, match="last.json"):
            train_segmenter(_seg_cfg(), *seg_data, run)
    assert _tree(victim) == {"notes.txt": b"a user's file"}


def test_segment_train_overwrite_never_deletes_what_last_json_names(seg_data, tmp_path):
    victim = _user_folder(tmp_path / "victim")
    run = claim_output(tmp_path / "run", "segmentation run")
    (run / "last.json").write_text(json.dumps({"folder": "../victim", "step": 1}), encoding="utf-8")
    result = train_segmenter(_seg_cfg(steps=1), *seg_data, run, overwrite=True, resume=False)
    assert result.steps == 1 and json.loads((run / "last.json").read_text(encoding="utf-8"))["folder"] == "last-0000001"
    assert _tree(victim) == {"notes.txt": b"a user's file"}


# 6. files as the user expects


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_umask_permissions(tmp_path, umask):
    before = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        write_text_atomic(tmp_path / "b.txt", "x")
    finally:
        os.umask(before)
    for name in ("a.json", "b.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_resumed_runs_say_from_which_step(seg_data, tmp_path, capsys):
    from lesionforge.validate.pixel_segmenter import PixelSegmenterConfig, train_pixel_segmenter

    train_segmenter(_seg_cfg(steps=3), *seg_data, tmp_path / "seg", stop_after=2)
    assert "resuming" not in capsys.readouterr().err
    train_segmenter(_seg_cfg(steps=3), *seg_data, tmp_path / "seg")
    err = " ".join(capsys.readouterr().err.split())
    assert f"resuming {tmp_path / 'seg'} from step 2 of 3" in err

    cfg = PixelSegmenterConfig(resolution=32, features=(4, 4, 8, 8, 16, 4), steps=2, batch_size=2,
                               checkpoint_every=1)
    train_pixel_segmenter(cfg, seg_data[0], tmp_path / "val", resume=True)
    capsys.readouterr()
    train_pixel_segmenter(cfg.model_copy(update={"steps": 3}), seg_data[0], tmp_path / "val", resume=True)
    assert "from step 2" in " ".join(capsys.readouterr().err.split())
