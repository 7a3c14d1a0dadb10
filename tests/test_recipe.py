"""The CtP recipe: the shipped presets, the original one override away, unknown options refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize
from omegaconf import OmegaConf

from CtP.patches import PatchMask, PatchMaskParams
from CtP.recipe import CtPRecipe, recipe_from_mapping

CONF = Path(__file__).resolve().parents[1] / "conf"


def _composed(*overrides: str) -> dict[str, Any]:
    with initialize(config_path="../conf", version_base="1.3"):
        cfg = compose(config_name="base", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def test_reference_preset_is_the_original_recipe() -> None:
    cfg = _composed("ctp=reference")
    assert recipe_from_mapping(cfg["ctp"]) == CtPRecipe()
    assert CtPRecipe().patch == PatchMaskParams()  # and the library defaults are the reference's


def test_default_preset_differs_only_where_documented() -> None:
    marked = recipe_from_mapping(_composed()["ctp"])
    assert marked.head_init == "live" and marked.patch.highlight == 1.0
    assert marked.patch.tint == "random"
    changed = {
        name for name in PatchMaskParams.__dataclass_fields__
        if getattr(marked.patch, name) != getattr(PatchMaskParams(), name)
    }  # fmt: skip
    assert changed == {
        "key_frame_probs", "size_velocity", "label_prob", "mask_shape_probs", "soft_edge_prob",
        "opacity_range", "highlight", "tint",
    }  # fmt: skip
    assert (marked.hue_sat_prob, marked.brightness_prob, marked.contrast_prob) == (0, 0, 0)
    # every departure in conf/ctp/marked.yaml says so in its comment
    lines = (CONF / "ctp" / "marked.yaml").read_text().splitlines()
    settings = [line for line in lines if ":" in line and not line.lstrip().startswith(("#", "-"))]
    values = [line for line in settings if not line.rstrip().endswith(":")]
    assert values and all("departure" in line for line in values)


def test_paper_experiments_use_the_reference_recipe() -> None:
    for experiment in ("paper_ucf101", "paper_k400"):
        cfg = _composed(f"experiment={experiment}")
        assert recipe_from_mapping(cfg["ctp"]) == CtPRecipe()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"head_init": "dead"}, "head_init"),
        ({"colour": 1}, "unknown ctp option 'colour'"),
        ({"patch": {"speed": 2}}, "unknown ctp.patch option 'speed'"),
        ({"patch": {"highlight": 1.5}}, "highlight must lie in"),
        ({"brightness_prob": -0.1}, "brightness_prob must lie in"),
    ],
)
def test_bad_recipe_values_name_the_option(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        recipe_from_mapping(values)


def test_recipe_builds_its_model_and_pipeline() -> None:
    recipe = recipe_from_mapping({"head_init": "live", "patch": {"highlight": 1.0}})
    model = recipe.build_model(width=8, clip_len=8)
    assert model.head.fc1.weight.std().item() > 0.005  # not the reference's N(0, 0.001)
    augmentation = recipe.augmentation(32)
    assert augmentation.patch_mask.params.highlight == 1.0
    assert augmentation.patch_mask.params.scales == PatchMaskParams().for_crop(32).scales


@pytest.mark.parametrize("highlight", [0.0, 0.5, 1.0])
def test_highlight_blends_the_patch_toward_white(highlight: float) -> None:
    # a flat grey clip: a pasted piece of it is grey 100, blended toward white 255
    clip = np.full((4, 48, 48, 3), 100, dtype=np.uint8)
    params = PatchMaskParams(
        num_rois=1, label_prob=1.0, mask_shape_probs=(1.0, 0.0, 0.0), soft_edge_prob=0.0,
        opacity_range=(1.0, 1.0), highlight=highlight,
    ).for_crop(48)  # fmt: skip
    out, boxes, _ = PatchMask(params)(clip, np.random.default_rng(0))
    expected = round(100 * (1 - highlight) + 255 * highlight)
    for t in range(4):
        x1, y1, x2, y2 = boxes[0, t]
        np.testing.assert_array_equal(out[t, y1:y2, x1:x2], expected)
        outside = np.ones(out.shape[1:3], dtype=bool)
        outside[y1:y2, x1:x2] = False
        assert np.all(out[t][outside] == 100)
