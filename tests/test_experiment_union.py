"""Generator method ``union``: one synthetic set joining other sets' pairs (config rules, the runner, the files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lesionforge.data.manifest import read_manifest
from lesionforge.errors import ConfigError
from lesionforge.experiment.config import load_experiment_config
from lesionforge.experiment.runner import SyntheticCache, run_experiment
from tests.test_experiment_runner import CONFIGS, FakeStages

UNION_ARM = {"name": "union", "kind": "synthetic", "generator": "both", "mixing": {"mode": "ratio", "ratio": 1},
             "filtered": False}


def _config(tmp_path: Path, **generators) -> Path:
    cfg = yaml.safe_load((CONFIGS / "smoke.yaml").read_text(encoding="utf-8"))
    cfg["generators"].update({"paste": {"method": "copy-paste-backgrounds", "n_per_real": 1},
                              "both": {"method": "union", "of": ["inpaint", "paste"]}, **generators})
    cfg["arms"] = [cfg["arms"][0], cfg["arms"][2], UNION_ARM]
    cfg.update(output=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"), seeds=[0, 1])
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "union.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


class UnionFake(FakeStages):
    """The runner's fake stages, recording the set each synthetic run trained on."""

    def __init__(self, demo):
        super().__init__(demo)
        self.sets: dict[str, list[str]] = {}

    def run_arm(self, cfg, arm, segment_config, n, data, synthetic, run_dir):
        if synthetic is not None:
            self.sets[arm.name] = [s.id for s in read_manifest(synthetic.manifest)]
        return super().run_arm(cfg, arm.model_copy(update={"name": "synthetic" if synthetic else arm.name}),
                               segment_config, n, data, synthetic, run_dir)


def test_union_set_joins_the_kept_pairs_of_its_parts_in_its_own_folder(tmp_path, demo_arrays):
    cfg = load_experiment_config(_config(tmp_path))
    stages = UnionFake(demo_arrays)
    run_experiment(cfg, stages, progress=False)
    # each part made once (the union makes nothing of its own), shared with the arm that uses the part alone
    assert sorted(stages.synth_calls) == [(8, "inpaint"), (8, "paste")]
    assert stages.sets["union"] == ["inpaint-syn0", "inpaint-syn1", "paste-syn0", "paste-syn1"]
    cache = SyntheticCache(cfg, stages, stages.load_data(cfg), 8)
    s = cache.get("both", make=False)
    assert s.info["parts"] == {"inpaint": 2, "paste": 2} and s.info["n_kept"] == 4
    rows = read_manifest(s.manifest)
    folder = cache.work_dir("both").resolve()
    assert all(Path(f).resolve().is_relative_to(folder) for r in rows for f in [r.image, *r.masks])
    assert [r.provenance.model_extra["union_part"] for r in rows] == ["inpaint", "inpaint", "paste", "paste"]
    assert all(r.provenance.source_id is not None for r in rows)  # the part's own provenance is kept
    res = json.loads((tmp_path / "results" / "demo-n8-tiny.json").read_text(encoding="utf-8"))
    arm = res["arms"]["union"]
    assert (arm["method"], arm["n_synthetic"]) == ("union", 4)
    # a part's filter is part of the union's key: changing it makes another union set
    other = load_experiment_config(_config(tmp_path / "b", inpaint={
        **yaml.safe_load((CONFIGS / "smoke.yaml").read_text())["generators"]["inpaint"],
        "filter": {"threshold": 0.5}}))
    assert SyntheticCache(other, stages, stages.load_data(other), 8).work_dir("both").name != \
        cache.work_dir("both").name


@pytest.mark.parametrize("change, message", [
    ({"both": {"method": "union", "of": ["inpaint", "nope"]}}, "not generator entries"),
    ({"both": {"method": "union", "of": ["inpaint"]}}, "two or more different"),
    ({"both": {"method": "union", "of": ["inpaint", "paste"], "sampler": "ddim"}}, "remove sampler"),
    ({"both": {"method": "union"}}, "`of`"),
    ({"paste": {"method": "copy-paste-backgrounds", "of": ["inpaint"]}}, "`of`"),
])
def test_union_config_errors_name_the_problem(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment_config(_config(tmp_path, **change))


def test_a_union_of_pasted_sets_is_a_copy_paste_reference_and_one_with_diffusion_pairs_is_not(tmp_path):
    cfg = load_experiment_config(_config(tmp_path, paste2={"method": "copy-paste-backgrounds", "n_per_real": 2},
                                         pasted={"method": "union", "of": ["paste", "paste2"]}))
    assert not cfg.is_copy_paste_reference(cfg.arm("union"))
    pasted = cfg.arm("union").model_copy(update={"generator": "pasted"})
    assert cfg.is_copy_paste_reference(pasted)


def test_copy_paste_donors_of_a_union_set_are_its_drawn_pairs_only():
    """Copy-paste's synthetic donors (``copy_paste.synthetic_donors``) are the pairs a generator drew: a union's
    pasted pairs hold real lesions, which are the real donors again."""
    from lesionforge.data.manifest import Provenance, Sample
    from lesionforge.experiment.real_stages import drawn_pairs
    from lesionforge.segment.pasted_set import GENERATOR

    rows = [Sample(id=f"s{i}", image=f"images/s{i}.png", masks=[f"masks/s{i}.png"], origin="synthetic",
                   provenance=Provenance(generator=g)) for i, g in enumerate(["inpaint", GENERATOR, "inpaint",
                                                                              GENERATOR, "mask2image"])]
    assert drawn_pairs(rows).tolist() == [0, 2, 4]
    assert drawn_pairs(rows[1:2]).tolist() == []
