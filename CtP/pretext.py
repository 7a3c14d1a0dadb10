"""The pretext-task interface: CtP, VCOP and Speed, each with its head, targets, loss and clips.

A pretext is a small frozen value (picklable, so it travels to Ray workers) that builds

* its model: a module with a ``backbone`` (the shared R3D-18, whose 120 ``backbone.*`` entries are
  CtP's whatever the pretext) and a ``head`` (``head.*``: the part a client keeps to itself),
  whose ``forward(**batch)`` returns the losses to train on (``loss*``) and the loss of the
  pretext's trivial prediction (``trivial_loss``) on the same batch;
* its dataset: one training sample per video, with the targets the model's ``forward`` takes.

So aggregation, checkpoints and the downstream code never depend on which pretext ran.

The three pretexts (name: task; trivial prediction; state-dict entries):

* ``ctp`` (:mod:`CtP.ctp`): track pasted patches; "nothing moves"; 126;
* ``vcop`` (:mod:`CtP.vcop`): the order of 3 shuffled clips; uniform scores, ln 3! = 1.79; 124;
* ``speed`` (:mod:`CtP.speed`): the playback stride of a clip; uniform scores, ln 7 = 1.95; 122.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

from torch import nn

from CtP.datasets import Annotation, FrameSource, SkippingDataset
from CtP.recipe import CtPRecipe, recipe_from_mapping
from CtP.speed import SpeedRecipe
from CtP.vcop import VCOPRecipe


class Pretext(Protocol):
    """What every pretext provides (see the module's docstring)."""

    name: ClassVar[str]

    def build_model(self, *, width: int, clip_len: int) -> nn.Module:
        """Build a freshly initialised model with ``backbone`` and ``head`` children."""
        ...

    def dataset(
        self,
        annotations: Sequence[Annotation],
        source: FrameSource,
        *,
        clip_len: int,
        crop_size: int,
        seed: int,
    ) -> SkippingDataset:
        """Build the pre-training dataset over ``annotations`` (one sample per video)."""
        ...


PRETEXTS: dict[str, type[VCOPRecipe] | type[SpeedRecipe]] = {
    VCOPRecipe.name: VCOPRecipe,
    SpeedRecipe.name: SpeedRecipe,
}
NAMES = (CtPRecipe.name, *PRETEXTS)


def _as_tuples(value: Any) -> Any:
    """Turn config lists (and lists of lists) into the tuples the frozen recipes hold."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def pretext_from_mapping(values: Mapping[str, Any], ctp: Mapping[str, Any]) -> Pretext:
    """Build the pretext of a run's config.

    Parameters
    ----------
    values
        The ``pretext`` section: ``name`` (ctp, vcop or speed) and that pretext's options
        (conf/pretext/); unknown options are refused.
    ctp
        The ``ctp`` section (conf/ctp/), read when ``name`` is ctp.

    Returns
    -------
    Pretext
        The checked recipe.

    Raises
    ------
    ValueError
        For an unknown pretext or option, or a value out of range, naming it.
    """
    options = {k: v for k, v in values.items() if k != "name"}
    name = values.get("name")
    if name == CtPRecipe.name:
        if options:
            raise ValueError(f"pretext ctp takes its options from the ctp group, not {options}")
        return recipe_from_mapping(ctp)
    if name not in PRETEXTS:
        raise ValueError(f"unknown pretext {name!r}; the pretexts are {list(NAMES)}")
    recipe = PRETEXTS[name]
    known = {f.name for f in dataclasses.fields(recipe)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown {name} option {unknown[0]!r}; the options are {sorted(known)}")
    return recipe(**{k: _as_tuples(v) for k, v in options.items()})
