"""One definition of the lesion size bands (data.bands), the same at the 1 % and 5 % edges everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from lesionforge.conditioning.masks import SizeSampler
from lesionforge.conditioning.prompts import PromptLibrary
from lesionforge.data.bands import BANDS, EMPTY, band_index, band_of, mask_group
from lesionforge.segment.metrics import lesion_table

EDGE_CASES = [(0.0, "small"), (0.0099, "small"), (0.01, "medium"), (0.03, "medium"), (0.05, "medium"),
              (0.0501, "large"), (1.0, "large")]


@pytest.mark.parametrize(("area", "band"), EDGE_CASES)
def test_band_of_follows_the_protocol_edges(area, band):
    assert band_of(area) == band  # PROTOCOL.md: < 1 %, 1-5 %, > 5 %
    assert band_index(np.array([area])).tolist() == [BANDS.index(band)]


def test_a_lesion_of_exactly_5_percent_is_medium_in_metrics_prompts_and_sampler():
    gt = np.zeros((1, 20, 20), np.uint8)
    gt[0, :4, :5] = 1  # 20 of 400 pixels: exactly 5 %
    gt[0, 10:12, 10:12] = 1  # 4 pixels: exactly 1 %
    table = lesion_table(np.zeros_like(gt), gt)
    pairs = zip(table["area"].tolist(), table["band"].tolist(), strict=True)
    assert sorted(pairs) == [(0.01, "medium"), (0.05, "medium")]
    lib = PromptLibrary.load("colon-polyp")  # names the bands diminutive / small / large
    assert [lib.band_for_area(a) for a, _ in EDGE_CASES] == ["diminutive", "diminutive", "small", "small",
                                                               "small", "large", "large"]
    sampler = SizeSampler([0.05, 0.0501, 0.0099])
    assert [a.tolist() for a in sampler.band_areas] == [[0.0099], [0.05], [0.0501]]


def test_a_prompt_file_with_other_band_edges_is_refused(tmp_path):
    from lesionforge.errors import PromptFileError

    ok = tmp_path / "ok.yaml"
    ok.write_text("size_bands: [{name: a, max_frac: 0.01}, {name: b, max_frac: 0.05}, {name: c, max_frac: 1.0}]\n"
                  "templates: [x]\n", encoding="utf-8")
    assert PromptLibrary.from_file(ok).band_for_area(0.05) == "b"  # an older file stating the protocol's edges
    bad = tmp_path / "bad.yaml"
    bad.write_text("size_bands: [{name: a, max_frac: 0.02}, {name: b, max_frac: 0.05}, {name: c, max_frac: 1.0}]\n"
                   "templates: [x]\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match="protocol's 3 size bands"):
        PromptLibrary.from_file(bad)


def test_an_empty_mask_is_in_no_band_and_a_lesion_is_in_its_own():
    mask = np.zeros((10, 10), np.uint8)
    assert mask_group(mask) == EMPTY  # a negative, not a small lesion
    mask[0, 0] = 1  # 1 %: the medium band's lower edge
    assert mask_group(mask) == "medium" == band_of(0.01)
    mask[:, :6] = 255  # 60 %, any non-zero value is foreground
    assert mask_group(mask) == "large"
