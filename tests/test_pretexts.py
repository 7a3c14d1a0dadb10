"""VCOP and Speed beside CtP: samplers, targets on hand-built clips, trivial losses, config."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from CtP.backbone import backbone_state_spec
from CtP.classifier import pretext_classification_losses
from CtP.datasets import Annotation, IndexChooser
from CtP.pretext import NAMES, pretext_from_mapping
from CtP.recipe import CtPRecipe
from CtP.sampling import signed_stride_indices, tuple_clip_indices
from CtP.speed import SpeedRecipe
from CtP.transforms import IMAGENET_MEAN, IMAGENET_STD
from CtP.vcop import VCOPRecipe, permutations

CONF = Path(__file__).resolve().parents[1] / "conf"
STEP = 4  # frame i of a counting video is grey level STEP * i


class CountingVideo:
    """A frame source whose frame i is a flat grey image of level ``STEP * i``."""

    def __init__(self, num_frames: int, size: tuple[int, int] = (48, 64)) -> None:
        self.num_frames, self.size = num_frames, size
        self.chosen: list[np.ndarray] = []

    def read_clip(self, name: str, choose: IndexChooser) -> np.ndarray:
        indices = choose(self.num_frames)
        self.chosen.append(indices)
        frames = np.broadcast_to(
            (STEP * indices).astype(np.uint8)[:, None, None, None], (len(indices), *self.size, 3)
        )
        return np.ascontiguousarray(frames)


def frame_numbers(clip: torch.Tensor) -> np.ndarray:
    """Read the frame numbers back from a normalised clip ``[3, T, S, S]`` of a counting video."""
    level = clip[0].mean(dim=(1, 2)).numpy() * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # [T]
    return np.round(level * 255.0 / STEP).astype(np.int64)


# ---------------------------------------------------------------------------------- samplers


def test_tuple_clips_follow_each_other_with_the_gap() -> None:
    rng = np.random.default_rng(0)
    exact = tuple_clip_indices(40, 8, 3, (8, 8), rng)  # 3 * 8 + 2 * 8 = 40: one placement
    np.testing.assert_array_equal(exact[:, 0], [0, 16, 32])
    np.testing.assert_array_equal(exact[1], np.arange(16, 24))
    for _ in range(20):
        indices = tuple_clip_indices(100, 8, 3, (4, 12), rng)
        gaps = indices[1:, 0] - indices[:-1, -1] - 1
        assert gaps[0] == gaps[1] and 4 <= gaps[0] <= 12
        assert indices.min() >= 0 and indices.max() <= 99
    # a video too short for the minimum gap uses the gap it has; one too short for 3 clips overlaps
    np.testing.assert_array_equal(tuple_clip_indices(30, 8, 3, (8, 8), rng)[:, 0], [0, 11, 22])
    short = tuple_clip_indices(12, 8, 3, (8, 8), rng)
    assert short.shape == (3, 8) and short.max() <= 11 and (np.diff(short[:, 0]) >= 0).all()
    with pytest.raises(ValueError, match="tuple_len >= 2"):
        tuple_clip_indices(40, 8, 1, (8, 8), rng)


@pytest.mark.parametrize("stride", [-4, -1, 0, 1, 2, 4])
def test_signed_stride_plays_forwards_backwards_or_still(stride: int) -> None:
    indices = signed_stride_indices(60, 8, stride, np.random.default_rng(stride + 10))
    np.testing.assert_array_equal(np.diff(indices), np.full(7, stride))
    assert indices.min() >= 0 and indices.max() < 60


def test_signed_stride_clamps_in_a_short_video() -> None:
    indices = signed_stride_indices(10, 8, -4, np.random.default_rng(0))
    np.testing.assert_array_equal(indices, [9, 9, 9, 9, 9, 8, 4, 0])


# ------------------------------------------------------------------- targets on known clips


def test_vcop_sample_is_its_tuple_shuffled_by_the_labelled_order() -> None:
    source = CountingVideo(40)
    dataset = VCOPRecipe().dataset([Annotation("A/v", 1)], source, clip_len=8, crop_size=32, seed=3)
    orders = permutations(3)
    seen = set()
    for epoch in range(30):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        assert sample["imgs"].shape == (3, 3, 8, 32, 32)
        label = int(sample["gt_labels"])
        seen.add(label)
        firsts = [frame_numbers(clip)[0] for clip in sample["imgs"]]  # [N]
        np.testing.assert_array_equal(firsts, 16 * orders[label])  # clips start at 0, 16, 32
        for clip in sample["imgs"]:
            np.testing.assert_array_equal(np.diff(frame_numbers(clip)), np.ones(7))
    assert seen == set(range(6))


def test_speed_sample_is_played_at_the_labelled_stride() -> None:
    recipe = SpeedRecipe(colour_prob=0.0)  # brightness changes would blur the frame numbers
    dataset = recipe.dataset(
        [Annotation("A/v", 1)], CountingVideo(60), clip_len=8, crop_size=32, seed=5
    )
    seen = set()
    for epoch in range(40):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        label = int(sample["gt_labels"])
        seen.add(label)
        steps = np.diff(frame_numbers(sample["imgs"]))
        np.testing.assert_array_equal(steps, np.full(7, recipe.strides[label]))
    assert seen == set(range(len(recipe.strides)))


# ------------------------------------------------------------------- models and trivial loss


def test_classification_loss_of_uniform_scores_is_its_trivial_loss() -> None:
    for classes in (6, 7):
        losses = pretext_classification_losses(torch.zeros(5, classes), torch.arange(5))
        assert float(losses["loss_cls"]) == pytest.approx(math.log(classes))
        assert float(losses["trivial_loss"]) == pytest.approx(math.log(classes))
    confident = pretext_classification_losses(10.0 * torch.eye(4), torch.arange(4))
    assert float(confident["loss_cls"]) < 0.01 and float(confident["accuracy"]) == 1.0
    with pytest.raises(ValueError, match="labels must be"):
        pretext_classification_losses(torch.zeros(2, 6), torch.zeros(3))


@pytest.mark.parametrize(
    ("recipe", "imgs", "entries", "head"),
    [
        (VCOPRecipe(), (2, 3, 3, 8, 32, 32), 124, ["fc1.weight", "fc1.bias", "fc2.weight",
                                                   "fc2.bias"]),
        (SpeedRecipe(), (2, 3, 8, 32, 32), 122, ["fc_cls.weight", "fc_cls.bias"]),
    ],
)  # fmt: skip
def test_pretext_models_share_ctp_backbone_and_start_at_the_trivial_loss(
    recipe: Any, imgs: tuple[int, ...], entries: int, head: list[str]
) -> None:
    torch.manual_seed(0)
    model = recipe.build_model(width=8, clip_len=8)
    state = model.state_dict()
    assert len(state) == entries
    assert list(state)[:120] == [f"backbone.{name}" for name, _ in backbone_state_spec(8)]
    assert list(state)[120:] == [f"head.{name}" for name in head]
    assert (
        list(CtPRecipe().build_model(width=8, clip_len=8).state_dict())[:120] == list(state)[:120]
    )

    model.eval()
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        losses = model(torch.randn(imgs), labels)
    assert set(losses) == {"loss_cls", "accuracy", "trivial_loss"}
    # the last layer starts at N(0, 0.001): the scores are nearly uniform
    assert float(losses["loss_cls"]) == pytest.approx(float(losses["trivial_loss"]), abs=0.02)
    last = getattr(model.head, head[-1].split(".")[0])  # fc2 / fc_cls: the scores
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        exact = model(torch.randn(imgs), labels)
    assert float(exact["loss_cls"]) == pytest.approx(float(exact["trivial_loss"]), abs=1e-6)


def test_vcop_scores_depend_on_the_clip_order() -> None:
    torch.manual_seed(1)
    model = VCOPRecipe(dropout=0.0).build_model(width=8, clip_len=8).eval()
    with torch.no_grad():
        model.head.fc2.weight.normal_(std=1.0)
        clips = torch.randn(1, 3, 3, 8, 32, 32)
        feats = model.backbone(clips.flatten(0, 1))
        swapped = model.backbone(clips[:, [1, 0, 2]].flatten(0, 1))
        assert not torch.allclose(model.head(feats), model.head(swapped))
    with pytest.raises(ValueError, match="VCOP expects tuples"):
        model(torch.randn(2, 3, 8, 32, 32), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------------------------ config


def compose_main(*overrides: str) -> dict[str, Any]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="base", overrides=list(overrides))
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def test_pretext_group_builds_each_recipe_with_its_reference_values() -> None:
    default = compose_main()
    assert default["pretext"] == {"name": "ctp"}
    assert pretext_from_mapping(default["pretext"], default["ctp"]).name == "ctp"
    vcop = compose_main("pretext=vcop")
    assert pretext_from_mapping(vcop["pretext"], vcop["ctp"]) == VCOPRecipe()
    assert vcop["optimizer"]["lr"] == 0.001  # the VCOP config's learning rate
    speed = compose_main("pretext=speed")
    assert pretext_from_mapping(speed["pretext"], speed["ctp"]) == SpeedRecipe()
    assert speed["optimizer"]["lr"] == 0.01
    assert NAMES == ("ctp", "vcop", "speed")


@pytest.mark.parametrize("name", ["vcop", "speed"])
def test_zero_init_residual_reaches_the_pretext_backbone(name: str) -> None:
    def last_bn_weights(overrides: list[str]) -> torch.Tensor:
        cfg = compose_main(f"pretext={name}", *overrides)
        model = pretext_from_mapping(cfg["pretext"], cfg["ctp"]).build_model(width=8, clip_len=8)
        bn = model.get_submodule("backbone.layer2.1.bn2")
        assert isinstance(bn, torch.nn.BatchNorm3d)
        return bn.weight

    assert torch.all(last_bn_weights([]) == 1)  # the reference: every BatchNorm starts at 1
    assert torch.all(last_bn_weights(["pretext.zero_init_residual=true"]) == 0)


def test_unknown_pretext_lists_the_choices() -> None:
    with pytest.raises(ConfigCompositionException) as error:
        compose_main("pretext=rotation")
    message = str(error.value)
    assert all(name in message for name in NAMES)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"name": "rotation"}, "unknown pretext 'rotation'"),
        ({"name": "vcop", "tuple_length": 4}, "unknown vcop option 'tuple_length'"),
        ({"name": "vcop", "interval": [9, 8]}, "interval"),
        ({"name": "speed", "strides": [1, 1]}, "two distinct strides"),
        ({"name": "ctp", "head_init": "live"}, "ctp group"),
    ],
)
def test_bad_pretext_values_name_the_problem(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pretext_from_mapping(values, {})
