"""Config-time check that every closed-loop arm is compared fairly with its open-loop arm.

Fair by construction: the closed-loop arm names an open-loop synthetic arm with the same generator (so the same
``n_per_real`` x N synthetic pairs in total, split over the rounds), the same way synthetic pairs enter the batch
(the mixing block, filter use, copy-paste) and, like every arm, the shared segmentation steps. At run time
:func:`lesionforge.experiment.loop_arm.fairness` checks the resolved numbers again and records them in the run.
"""

from __future__ import annotations

#: arm fields that must be equal between a closed-loop arm and its open-loop arm
SAME_AS_OPEN_LOOP = ("generator", "mixing", "filtered", "copy_paste")


def check_closed_loop_arms(cfg) -> None:
    """Raise ``ValueError`` (a config error) for a closed-loop arm that could not be compared fairly."""
    arms = {a.name: a for a in cfg.arms}
    for arm in cfg.arms:
        if arm.kind != "closed-loop":
            continue
        ref = arms.get(arm.loop.open_loop_arm)
        if ref is None or ref.kind != "synthetic":
            raise ValueError(f"arm {arm.name!r}: loop.open_loop_arm {arm.loop.open_loop_arm!r} must name a synthetic "
                             "arm of this config")
        if ref.n_labelled is not None and not set(arm.n_labelled or cfg.n_labelled) <= set(ref.n_labelled):
            raise ValueError(f"arm {arm.name!r}: measured at an N where its open-loop arm {ref.name!r} is not "
                             f"(that arm's n_labelled: {ref.n_labelled})")
        differ = [k for k in SAME_AS_OPEN_LOOP if getattr(arm, k) != getattr(ref, k)]
        if differ:
            raise ValueError(f"arm {arm.name!r}: {', '.join(differ)} differ from open-loop arm {ref.name!r}; "
                             "the same generator and mixing are needed for the same synthetic count and budget")
        if arm.mixing.mode == "patch-merge":
            raise ValueError(f"arm {arm.name!r}: mixing 'patch-merge' needs pixel-aligned twins, which the loop's "
                             "new masks do not have")
        spec = cfg.generators[arm.generator]
        if arm.loop.steers_keep and not (arm.filtered and spec.filter is not None and spec.filter.keep_best):
            raise ValueError(f"arm {arm.name!r}: loop.steer_by 'keep' reweights what the filter keeps; it needs a "
                             "filtered arm whose generator's filter sets keep_best")
        if spec.repaint_share and not arm.loop.steers_keep:
            raise ValueError(f"arm {arm.name!r}: its generator repaints labelled images (repaint_share), but a loop "
                             "steering by draw makes masks of bands with no labelled source; use steer_by 'keep'")
        if spec.paste_strength and not arm.loop.steers_keep:
            raise ValueError(f"arm {arm.name!r}: its generator re-draws pasted real lesions (paste_strength), but a "
                             "loop steering by draw makes masks of bands with no labelled donor; use steer_by 'keep'")
        small = [n for n in cfg.n_labelled if spec.n_per_real * n < arm.loop.rounds]
        if small:
            raise ValueError(f"arm {arm.name!r}: N = {small} gives fewer synthetic pairs than "
                             f"{arm.loop.rounds} rounds")
