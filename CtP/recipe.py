"""The CtP recipe: every choice of the pretext task that a run may change, in one value.

A :class:`CtPRecipe` holds the head's initialisation, the PatchMask parameters (at the 112-pixel
reference crop) and the probabilities of the colour augmentations. Its defaults are the
reference's (the original CtP code, reference §3), so ``CtPRecipe()`` is the original task; the
project's departures (a live head, highlighted patches, simpler trajectories) are values of the
same fields, chosen in ``conf/ctp/`` and measured in docs/differences.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from CtP.ctp import HEAD_INITS, CtP, HeadInit, build_ctp
from CtP.ctp_augmentation import CtPAugmentation
from CtP.datasets import Annotation, CtPDataset, FrameSource
from CtP.patches import PatchMaskParams

PATCH_FIELDS = tuple(f.name for f in dataclasses.fields(PatchMaskParams))


@dataclass(frozen=True)
class CtPRecipe:
    """How the CtP pretext task is set up; the defaults are the reference's.

    Parameters
    ----------
    head_init
        ``"reference"`` (fc1 and pred_head from N(0, 0.001)) or ``"live"`` (fc1 keeps PyTorch's
        default initialisation), see :class:`CtP.ctp.CtPHead`.
    patch
        PatchMask parameters at the 112-pixel reference crop (scaled to the crop when used).
    hue_sat_prob, brightness_prob, contrast_prob
        Probabilities of the hue/saturation change and of the dynamic brightness and contrast
        (reference §3.2 steps 5-7: 0.25, 0.5, 0.5).
    """

    name: ClassVar[str] = "ctp"
    head_init: HeadInit = "reference"
    patch: PatchMaskParams = field(default_factory=PatchMaskParams)
    hue_sat_prob: float = 0.25  # §3.2 step 5
    brightness_prob: float = 0.5  # §3.2 step 6
    contrast_prob: float = 0.5  # §3.2 step 7

    def __post_init__(self) -> None:
        if self.head_init not in HEAD_INITS:
            raise ValueError(
                f"head_init must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}"
            )
        for name in ("hue_sat_prob", "brightness_prob", "contrast_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    def build_model(self, *, width: int, clip_len: int) -> CtP:
        """Build a freshly initialised CtP model with this recipe's head."""
        return build_ctp(width=width, clip_len=clip_len, head_init=self.head_init)

    def augmentation(self, crop_size: int) -> CtPAugmentation:
        """Build the CtP pre-training pipeline for ``crop_size`` clips with this recipe."""
        return CtPAugmentation(
            crop_size=crop_size,
            patch_params=self.patch,
            hue_sat_prob=self.hue_sat_prob,
            brightness_prob=self.brightness_prob,
            contrast_prob=self.contrast_prob,
        )

    def dataset(
        self,
        annotations: Sequence[Annotation],
        source: FrameSource,
        *,
        clip_len: int,
        crop_size: int,
        seed: int,
    ) -> CtPDataset:
        """Build the CtP dataset of ``crop_size`` clips (patch sizes scale with the crop)."""
        augmentation = self.augmentation(crop_size)
        return CtPDataset(annotations, source, augmentation, clip_len=clip_len, seed=seed)


def recipe_from_mapping(values: Mapping[str, Any]) -> CtPRecipe:
    """Build a recipe from plain values (a config section); unknown keys are refused.

    Parameters
    ----------
    values
        ``head_init``, the three colour probabilities and ``patch`` (a mapping of
        :class:`PatchMaskParams` fields; lists become tuples). Missing keys keep the reference's
        value.

    Returns
    -------
    CtPRecipe
        The checked recipe.

    Raises
    ------
    ValueError
        For an unknown key or a value out of range, naming it.
    """
    known = {f.name for f in dataclasses.fields(CtPRecipe)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown ctp option {unknown[0]!r}; the options are {sorted(known)}")
    patch_values = dict(values.get("patch") or {})
    unknown = sorted(set(patch_values) - set(PATCH_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown ctp.patch option {unknown[0]!r}; the options are {list(PATCH_FIELDS)}"
        )
    patch_kwargs: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list | tuple) else v for k, v in patch_values.items()
    }
    patch = PatchMaskParams(**patch_kwargs)
    scalars = {k: v for k, v in values.items() if k != "patch"}
    return CtPRecipe(patch=patch, **scalars)
