"""The conditioning commands and the file writers behind them, on the demo dataset."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from lesionforge.cli.conditioning import app
from lesionforge.data.io import read_mask

runner = CliRunner()


def test_prompts_command_respects_size_band():
    result = runner.invoke(app, ["prompts", "--dataset", "kvasir-seg", "--area", "0.004", "--n", "4"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 4 and all("diminutive" in line for line in lines)


def test_masks_command_writes_masks_and_record(demo_root, tmp_path):
    out = tmp_path / "masks"
    args = ["masks", "--manifest", str(demo_root / "manifest.jsonl"), "--out", str(out), "--n", "3",
            "--resolution", "32", "--source", "size", "--seed", "7"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "masks.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and all(r["mask_source"] == "size_controlled" for r in rows)
    for row in rows:
        mask = read_mask(out / row["file"])
        assert mask.shape == (32, 32) and abs(mask.mean() - row["area_frac"]) < 1e-9
    again = runner.invoke(app, args)  # never overwrite without --overwrite
    assert again.exit_code != 0 and "overwrite" in str(again.exception)
    redo = tmp_path / "redo"
    runner.invoke(app, [*args[:4], str(redo), *args[5:]])
    np.testing.assert_array_equal(read_mask(redo / rows[1]["file"]), read_mask(out / rows[1]["file"]))


def test_edges_command_writes_one_map_per_sample(demo_root, tmp_path):
    out = tmp_path / "edges"
    result = runner.invoke(app, ["edges", "--manifest", str(demo_root / "manifest.jsonl"), "--out", str(out),
                                 "--resolution", "32"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "edges.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 40 and all((out / r["file"]).is_file() for r in rows)
    assert all(r["edge_frac"] > 0 for r in rows if r["id"] in {"demo_0000", "demo_0001"})
