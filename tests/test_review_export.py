"""``lesionforge export``: accepted, non-flagged synthetic pairs with the real ones, in a plain folder and in
nnU-Net v2's raw layout (checked by nnU-Net's own integrity check when nnunetv2 is installed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from review_data import COPY_ID, FILTER_REJECTED_ID, make_review_set
from typer.testing import CliRunner

from lesionforge.cli import app
from lesionforge.data.io import read_image
from lesionforge.data.manifest import read_manifest
from lesionforge.errors import OverwriteError
from lesionforge.review.export import export_set
from lesionforge.review.store import ReviewSet


@pytest.fixture
def reviewed(tmp_path):
    set_dir, real = make_review_set(tmp_path)
    rs = ReviewSet.open(set_dir, real=real)
    for sid in ("syn0", "syn1", FILTER_REJECTED_ID, COPY_ID):
        rs.decide("alice", sid, "accepted")
    rs.decide("alice", "syn2", "rejected")
    rs.decide("bob", "syn1", "rejected")  # one rejection keeps it out under the default rule
    return set_dir, real


def test_export_plain_nnunet_and_datasheet(reviewed, tmp_path):
    set_dir, real = reviewed
    out = tmp_path / "out"
    summary = export_set(ReviewSet.open(set_dir, real=real), out, dataset_id=7, name="Demo")
    syn = sorted(v[1] for v in summary["cases"].values() if v[0] == "synthetic")
    assert syn == ["syn0", FILTER_REJECTED_ID]  # syn1 rejected by bob, syn2 by alice, syn5 flagged, syn3 unreviewed
    n = summary["counts"]
    assert n["exported_real"] == 12 and n["accepted_flagged_left_out"] == 1 and n["accepted_filter_rejected"] == 1
    nn = out / "nnunet" / "Dataset007_Demo"
    ds = json.loads((nn / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "lesion": 1} and ds["numTraining"] == 14 and ds["file_ending"] == ".png"
    cases = sorted(p.name[: -len(".png")] for p in (nn / "labelsTr").glob("*.png"))
    assert sorted(p.name[: -len("_0000.png")] for p in (nn / "imagesTr").glob("*_0000.png")) == cases
    assert len(cases) == 14 and not list((nn / "imagesTr").glob("*[!0][!0][!0][!0].png"))
    label = read_image(nn / "labelsTr" / "syn-syn0.png")[..., 0]
    assert set(np.unique(label)) == {0, 1}  # nnU-Net label values, not 0/255
    image = read_image(nn / "imagesTr" / "syn-syn0_0000.png")
    assert image.shape[-1] == len(ds["channel_names"])
    rows = read_manifest(out / "plain" / "manifest.jsonl")
    assert len(rows) == 14 and {r.origin for r in rows} == {"real", "synthetic"}
    assert np.array_equal(read_image(rows[-1].image), read_image(out / "plain" / "images" / f"{rows[-1].id}.png"))
    sheet = (out / "datasheet.md").read_text()
    assert "| accepted but flagged, left out | 1 |" in sheet and COPY_ID in sheet and "alice, bob" in sheet
    assert "pixels-8 features, 12 training images" in sheet and str(real) in sheet
    with pytest.raises(OverwriteError):
        export_set(ReviewSet.open(set_dir, real=real), out)


def test_export_include_flagged_and_single_reviewer_cli(reviewed, tmp_path):
    set_dir, real = reviewed
    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["export", str(set_dir), "--out", str(out), "--real", str(real), "--real-split", "",
                                 "--reviewer", "alice", "--include-flagged"])
    assert r.exit_code == 0, r.output
    cases = json.loads((out / "export.json").read_text())["cases"]
    assert sorted(v[1] for v in cases.values() if v[0] == "synthetic") == ["syn0", "syn1", FILTER_REJECTED_ID, COPY_ID]
    assert "4 synthetic + 12 real" in r.output


@pytest.mark.slow
def test_export_passes_nnunet_integrity_check(reviewed, tmp_path):
    pytest.importorskip("nnunetv2", reason="nnunetv2 not installed (.ci/run installs it --no-deps; docs/review.md)")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    set_dir, real = reviewed
    export_set(ReviewSet.open(set_dir, real=real), tmp_path / "out", dataset_id=8, name="Check")
    verify_dataset_integrity(str(tmp_path / "out" / "nnunet" / "Dataset008_Check"), num_processes=1)


def test_export_gives_every_case_one_channel_count(reviewed, tmp_path):
    """nnU-Net needs one channel count: a grey image among colour ones is written as RGB; an all-grey set
    stays one channel."""
    from lesionforge.data.io import write_image

    set_dir, real = reviewed
    write_image(set_dir / "images" / "syn0.png", read_image(set_dir / "images" / "syn0.png", channels=1))
    summary = export_set(ReviewSet.open(set_dir, real=real), tmp_path / "mixed")
    folder = tmp_path / "mixed" / "nnunet" / "Dataset501_Lesionforge" / "imagesTr"
    assert summary["channels"] == 3 and {read_image(p).shape[-1] for p in folder.glob("*.png")} == {3}
    assert np.ptp(read_image(folder / "syn-syn0_0000.png").astype(int), axis=-1).max() == 0  # grey content, RGB

    rs = ReviewSet.open(set_dir)  # no real pairs; carol accepted only the grey syn0
    rs.decide("carol", "syn0", "accepted")
    assert export_set(rs, tmp_path / "grey", reviewer="carol")["channels"] == 1
    ds = json.loads((tmp_path / "grey" / "nnunet" / "Dataset501_Lesionforge" / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "grey"} and ds["numTraining"] == 1
