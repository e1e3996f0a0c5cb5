"""Prompt libraries: template expansion, class and size consistency, user prompt files."""

from __future__ import annotations

import numpy as np
import pytest

from lesionforge.conditioning.prompts import PromptLibrary, available_domains, domain_for_dataset, expand_templates
from lesionforge.errors import ConfigError, PromptFileError


def test_expand_templates_is_combinatorial_and_tidy():
    out = expand_templates(
        ["a {size} {shape} mass", "{size} lesion"], {"size": ["small", ""], "shape": ["oval", "round"]}
    )
    assert out == ["a small oval mass", "a small round mass", "a oval mass", "a round mass", "small lesion", "lesion"]
    with pytest.raises(KeyError, match="colour"):
        expand_templates(["{colour} polyp"], {"size": ["small"]})


def test_builtin_libraries_and_dataset_domains():
    assert {"colon-polyp", "breast-ultrasound", "generic"} <= set(available_domains())
    assert domain_for_dataset("kvasir-seg") == "colon-polyp"
    assert domain_for_dataset("/data/shared/datasets/BUSI") == "breast-ultrasound"
    assert domain_for_dataset("my-ct-set") == "generic"
    with pytest.raises(ConfigError, match="available"):
        PromptLibrary.load("dermatology")


def test_polyp_prompts_follow_size_band():
    lib = PromptLibrary.load("colon-polyp")
    rng = np.random.default_rng(0)
    assert [lib.band_for_area(a) for a in (0.004, 0.01, 0.03, 0.2)] == ["diminutive", "small", "small", "large"]
    tiny = {lib.prompt_for(None, None, 0.004, rng) for _ in range(30)}
    large = {lib.prompt_for(None, None, 0.2, rng) for _ in range(30)}
    assert all("diminutive" in p for p in tiny) and len(tiny) > 10
    assert all("large" in p and "diminutive" not in p for p in large)
    # pedunculated polyps are not offered as diminutive
    assert not any("pedunculated" in p for p in lib.prompts(None, "diminutive"))
    assert any("0-Ip pedunculated" in p for p in lib.prompts(None, "large"))


def test_breast_prompts_follow_class():
    lib = PromptLibrary.load("breast-ultrasound")
    assert set(lib.classes) == {"benign", "malignant", "normal"}
    benign, malignant = lib.prompts("benign", "medium"), lib.prompts("Malignant", "medium")
    assert not any("spiculated" in p or "irregular" in p for p in benign)
    assert all("irregular" in p for p in malignant)
    assert all("no mass" in p or "without a lesion" in p for p in lib.prompts("normal", "small"))
    rng = np.random.default_rng(1)
    assert lib.prompt_for("x", "malignant", 0.2, rng) in lib.prompts("malignant", "large")


def test_prompt_for_is_deterministic_given_seed():
    lib = PromptLibrary.load("generic")
    draw = [lib.prompt_for(None, None, None, np.random.default_rng(5)) for _ in range(2)]
    assert draw[0] == draw[1]
    # and the seed matters: other seeds draw other prompts
    others = {lib.prompt_for(None, None, None, np.random.default_rng(seed)) for seed in range(6, 16)}
    assert others - {draw[0]}


def test_user_csv_keyed_by_id_falls_back(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("id,prompt\ncase1,a red polyp\ncase1,a reddish polyp\ncase2,a pale polyp\n", encoding="utf-8")
    base = PromptLibrary.load("colon-polyp")
    lib = PromptLibrary.from_file(path, fallback=base)
    rng = np.random.default_rng(0)
    assert {lib.prompt_for("case1", None, 0.02, rng) for _ in range(20)} == {"a red polyp", "a reddish polyp"}
    assert lib.prompt_for("case2", None, 0.02, rng) == "a pale polyp"
    assert "diminutive" in lib.prompt_for("other", None, 0.001, rng)
    with pytest.raises(PromptFileError, match="no prompt"):
        PromptLibrary.from_file(path).prompt_for("other", None, 0.02, rng)


def test_user_yaml_keyed_by_class_with_slots(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text(
        "slots: {echo: [hypoechoic, anechoic]}\n"
        "band_slots: {small: {size: [tiny]}, medium: {size: [mid]}, large: {size: [big]}}\n"
        "by_class:\n  Benign: '{size} {echo} cyst'\n  malignant: ['a {size} irregular mass']\n"
    )
    lib = PromptLibrary.from_file(path)
    assert lib.classes == ["benign", "malignant"]
    assert lib.prompts("benign", "small") == ["tiny hypoechoic cyst", "tiny anechoic cyst"]
    assert lib.prompt_for(None, "malignant", 0.3, np.random.default_rng(0)) == "a big irregular mass"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.yaml", "templates: ['{size} polyp']\n", "no values"),
        ("b.yaml", "templates: [a polyp]\ncolour: red\n", "unknown key 'colour'"),
        ("c.yaml", "- just a list\n", "mapping"),
        ("d.yaml", "templates: [a: b: c\n", "not valid YAML"),
        ("e.csv", "sample,text\n1,a polyp\n", "header"),
        ("f.csv", "id,prompt\ncase1,\n", "line 2"),
        ("g.txt", "a polyp\n", "unknown prompt file type"),
        ("h.yaml", "size_bands: [{name: s, max_frac: 0.5}]\ntemplates: [x]\n", "size_bands"),
    ],
)
def test_bad_prompt_files_name_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PromptFileError, match=message) as err:
        PromptLibrary.from_file(path)
    assert err.value.path == str(path)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(PromptFileError, match="not found"):
        PromptLibrary.from_file(tmp_path / "nope.yaml")
