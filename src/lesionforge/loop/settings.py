"""Options of a ``closed-loop`` arm (how many rounds, how hard to steer, what counts as a failure)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from lesionforge.config import LaterFields

#: what a diagnosis can steer: the size band and shape class of the drawn masks, their position (mask2image),
#: the uncertain backgrounds (inpaint) and the appearance words of the prompts (text-conditioned generators)
Steerable = Literal["band", "shape", "position", "backgrounds", "appearance"]


class LoopSettings(LaterFields):
    """How the loop steers synthesis. The synthetic budget (``n_per_real`` x N of the arm's generator) is split
    over ``rounds``; the final segmenter trains with the shared segmentation steps, like every other arm."""

    _omitted_when_none: ClassVar[tuple[str, ...]] = ("steer", "steer_by")

    rounds: int = Field(2, ge=1, le=10)
    #: the open-loop synthetic arm this one is compared with: same generator, ratio, mixing and filter use,
    #: so the same total synthetic count and the same segmentation steps (checked when the config is read)
    open_loop_arm: str
    #: how hard to steer: each group (size band, shape class, grid cell, appearance cluster) is drawn at its
    #: natural share (its share of the val lesions, as the open loop draws it) times its relative failure rate,
    #: clipped to [1 / max_gain, max_gain]: a failing group is drawn at most ``max_gain`` times as often as
    #: open loop draws it, a well-handled one at least 1 / ``max_gain`` as often, so no group is ever dropped
    #: and the set is never narrowed. 1 gives the natural shares whatever the diagnosis (no steering: the
    #: control of an ablation)
    max_gain: float = Field(2.0, ge=1.0, le=10.0)
    #: a group's failure rate is shrunk towards the overall rate by this many pseudo-lesions, so a group of two
    #: val lesions, both missed, cannot swing the draw (the first real run targeted small polyps on 2 val lesions)
    prior_lesions: float = Field(5.0, ge=0.0)
    #: a lesion is under-segmented when less than this share of it is predicted (missed below ``miss_fraction``)
    under_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    #: how a lesion of the drawn band is made: ``jitter`` a real mask of that band (size-controlled when the band
    #: has none), or ``size``: a real outline rescaled into the band (conditioning/masks.py)
    mask_source: Literal["jitter", "size"] = "jitter"
    grid: int = Field(3, ge=1, le=8)  # position: the grid cell of the lesion centroid
    appearance_clusters: int = Field(3, ge=1, le=8)  # k-means on the lesion's mean colour (fixed seed)
    #: steps of the segmenters trained only to be diagnosed (rounds before the last); None: the shared steps
    round_steps: int | None = Field(None, ge=1)
    #: what the diagnosis steers; the rest is drawn as open loop draws it (natural shares, the plain prompts,
    #: every background equally). None: all of it. An ablation names a part (``[band]``) or none (``[]``: the
    #: loop's rounds and per-round filtering without any steering)
    steer: list[Steerable] | None = None
    #: how the steering acts. ``draw`` (None: the default): masks, prompts and backgrounds are drawn by the plan
    #: (conditions.py). ``keep``: every round draws exactly as the open-loop arm does (its mask source, plain
    #: prompts, every background equally) and the plan reweights which pairs the filter keeps: each source's
    #: quota follows the summed weights of its draws, a draw's weight the product of its groups' steered /
    #: natural shares (size band and shape of its mask, position for ``mask2image``, appearance of the made
    #: lesion), clipped to [1 / max_gain, max_gain]; the same count kept in all. Needs a filtered arm
    #: (docs/loop.md: the ablation that suggested it)
    steer_by: Literal["draw", "keep"] | None = None

    def steers(self, what: str) -> bool:
        """Does this loop steer ``what`` (one of :data:`Steerable`)?"""
        return self.steer is None or what in self.steer

    @property
    def steers_keep(self) -> bool:
        """Does the plan reweight what the filter keeps (``steer_by: keep``) rather than what is drawn?"""
        return self.steer_by == "keep"
