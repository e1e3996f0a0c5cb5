"""Usefulness screen (issue 13): rank a generator variant by what its pairs do for a segmenter, in minutes.

    python benchmarks/screen.py prepare --dataset kvasir-seg --n 32 --variant today --threads 1
    python benchmarks/screen.py run --dataset kvasir-seg --n 32 --variant today --variant vpred-minsnr --threads 1

A variant is the headline generator (``benchmarks/configs/<dataset>-cpu.yaml``, the entry of its ``synthetic`` arm:
``inpaint`` on Kvasir-SEG and BUSI, ``mask2image`` on the MSD hippocampus MRI slices) with some generator-config
fields changed (``VARIANTS``). ``prepare`` trains it (into the headline's own generator cache, through the
runner's stages, so the headline reuses it) and draws its synthetic set. ``run`` then trains the protocol
segmenter (the headline's network and augmentation) at a reduced budget, on (a) the synthetic pairs alone and
(b) the N real pairs plus the synthetic ones, selects and scores on real ``val`` (``test`` is never read), and
sets beside them the label fidelity (``label_fidelity.own_vs_shuffled``) and the in-domain KID of the synthetic
images. Real-only and copy-paste rows at the same budget make the scores comparable; they are trained once.
Each row also keeps its val score at the last step, without choosing the best evaluation; on volumes the gate's
paired intervals resample val cases, each with all its slices.
Writes ``benchmarks/results/screen-<dataset>-n<N>-cpu.json`` and ``.md``; every stage resumes from its files.
Two workers (one per core, e.g. ``run --real-only --seed 2`` beside ``run --variant X --joined-only --seed 2``)
share the rows they both need: a row the other is training is left for the end of the run, not waited for.
``agree`` recomputes the rank agreement and the gate from the files (the gate holds each variant to the strongest
real row and to the row of the headline result's best synthetic arm); ``compare`` sets one row against others:

    python benchmarks/screen.py compare pretrain+mask2image-8per-top4 baseline pretrain+mask2image-8per-top2 \
        --dataset busi --n 64 --steps 800
"""

from __future__ import annotations

import fcntl
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from label_fidelity import own_vs_shuffled  # noqa: E402

from lesionforge.data.arrays import PairArrays, load_arrays  # noqa: E402
from lesionforge.data.bands import BANDS, EMPTY, mask_group  # noqa: E402
from lesionforge.data.manifest import read_set  # noqa: E402
from lesionforge.data.volumes import case_groups, position_subsets  # noqa: E402
from lesionforge.devices import machine_facts  # noqa: E402
from lesionforge.experiment.agreement import rank_agreement  # noqa: E402
from lesionforge.experiment.budget import segment_config_for  # noqa: E402
from lesionforge.experiment.config import (  # noqa: E402
    PASTE_METHOD,
    UNION_METHOD,
    ArmSettings,
    ExperimentConfig,
    GeneratorSpec,
    load_experiment_config,
)
from lesionforge.experiment.locks import WAIT_TIMEOUT_S, Busy  # noqa: E402
from lesionforge.experiment.real_stages import PIXEL_FILTER_FILE, LesionforgeStages  # noqa: E402
from lesionforge.experiment.runner import SyntheticCache, _Wait, prepare_output  # noqa: E402
from lesionforge.experiment.set_fingerprint import fingerprint  # noqa: E402
from lesionforge.experiment.stages import ExperimentData, SyntheticSet  # noqa: E402
from lesionforge.experiment.stats import bootstrap_paired  # noqa: E402
from lesionforge.experiment.union_set import write_union_set  # noqa: E402
from lesionforge.generate.models import read_meta  # noqa: E402
from lesionforge.outputs import dir_hash  # noqa: E402
from lesionforge.presets import preset_path  # noqa: E402
from lesionforge.quality.features import FeatureExtractor, SegEncoder  # noqa: E402
from lesionforge.quality.metrics import kid, speckle  # noqa: E402
from lesionforge.segment.metrics import is_volumetric  # noqa: E402
from lesionforge.segment.model_io import load_segmenter  # noqa: E402
from lesionforge.utils import code_version, write_json_atomic, write_text_atomic  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One lever (or a stack of them) on the headline's synthetic arm.

    ``train``: generator-config fields changed (a new generator is trained; equal wall time: every training
    variant keeps today's steps x batch, the options cost the same per step, see the JSON's generator_train_s).
    ``synth``: fields of the generator entry changed (sampler, sampling_steps, eta, n_per_real, mask_source):
    the same generator draws another set. ``filter``: the headline's pixel filter on, with these fields changed
    (e.g. ``keep_best: K``: at most K samples per labelled pair, the best by validator Dice; ``threshold: 0``:
    no absolute cut, so every labelled pair keeps its K best whatever its lesion's size); the arms then train on
    the kept ones. ``arm``: fields of the
    synthetic arm changed (``mixing``, ``copy_paste``): its synthetic-only row is then the same as without them,
    and is not trained again. ``join``: another variant whose pairs (its kept ones, if it filters) are joined to
    this one's (the experiment's generator method ``union``), e.g. two generator kinds' sets; the rows train on
    the joined set, at the arm's ratio."""

    train: dict[str, Any] = field(default_factory=dict)
    synth: dict[str, Any] = field(default_factory=dict)
    filter: dict[str, Any] | None = None
    arm: dict[str, Any] | None = None
    join: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"overrides": self.train, "synthesis": self.synth, "filter": self.filter, "arm": self.arm,
                **({"join": self.join} if self.join else {})}


_PRETRAIN = {"pretrain_steps": 1000, "steps": 1000}  # half of today's steps on every image without a mask
_SDE25 = {"sampler": "sde-dpm++", "sampling_steps": 25}  # stochastic DPM-Solver++, 25 network evaluations
_IN_PLACE = {**_SDE25, "n_per_real": 8,  # 8 per labelled pair from masks jittered in shape only, where they are
             "jitter": {"max_shift": 0.0, "max_rotate": 10.0}}
def _top(k: int) -> dict[str, Any]:
    """The filter keeping the best ``k`` of each labelled pair's draws, no absolute cut."""
    return {"keep_best": k, "threshold": 0.0}


_TOP2 = _top(2)
#: size-controlled masks have no source pair: the best quarter of each size band's draws (validate/filter.py)
_SHARE25 = {"keep_share": 0.25, "threshold": 0.0}
#: the mask2image kind, 8 per labelled pair from jittered masks
_MASK2IMAGE = {**_SDE25, "n_per_real": 8, "method": "mask-conditioned",
               "config": "generator-mask2image-{preset}-cpu.yaml"}


def _mix(ratio: float, **fields: float | str) -> dict[str, Any]:
    """A variant's arm change: synthetic:real ``ratio`` in the batches, with the mixing's other ``fields``
    (``synthetic_until``, ``synthetic_border_ignore``, ``synthetic_pixel_filter``)."""
    return {"mixing": {"mode": "ratio", "ratio": ratio, **fields}}


VARIANTS: dict[str, Variant] = {
    "today": Variant(),  # BASE itself: the first-pass headline recipe
    "vpred-minsnr": Variant({"prediction_type": "v_prediction", "min_snr_gamma": 5.0}),
    "augment": Variant({"augment": {"p": 0.5}}),
    "vpred-minsnr+augment": Variant({"prediction_type": "v_prediction", "min_snr_gamma": 5.0, "augment": {"p": 0.5}}),
    # half of today's steps pretraining on every image without a mask, half fine-tuning (equal total steps)
    "pretrain": Variant(_PRETRAIN),
    # few-step samplers on the pretrained generator, against its 100-step ancestral DDPM
    "pretrain+sde-dpm++25": Variant(_PRETRAIN, _SDE25),
    "pretrain+ddim25-eta1": Variant(_PRETRAIN, {"sampler": "ddim", "sampling_steps": 25, "eta": 1.0}),
    # what is synthesized: the synthetic:real ratio, more pairs per real image with the filter keeping the best,
    # size-controlled masks with small lesions over-sampled
    "pretrain+ratio0.5": Variant(_PRETRAIN, arm=_mix(0.5)),
    "pretrain+ratio0.25": Variant(_PRETRAIN, arm=_mix(0.25)),
    # how the pairs are used: synthetic in the first 75 % of the steps, then the real pairs alone (fine-tuning);
    # copy-paste on the real half of each batch as well
    "pretrain+until0.75": Variant(_PRETRAIN, arm=_mix(1, synthetic_until=0.75)),
    "pretrain+copy-paste": Variant(_PRETRAIN, arm={"copy_paste": {"prob": 0.5}}),
    # (the automatic threshold keeps large lesions only at N = 32: every small and most medium ones fail it)
    "pretrain+8per-best2": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8}, {"keep_best": 2}),
    # the best 2 of 8 of every labelled pair, no absolute threshold: what is synthesized is not narrowed
    "pretrain+8per-top2": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8}, _TOP2),
    "pretrain+8per-top2+ratio0.5": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8}, _TOP2, arm=_mix(0.5)),
    # twice the kept pairs (124): the best 4 of 16 per labelled pair (the headline's selectivity, a new set of 512
    # draws), or the best 4 of the headline's own 8 (the same set, half as selective) (session 27)
    "pretrain+16per-top4": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 16}, _top(4)),
    "pretrain+8per-top4": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8}, _top(4)),
    # and the other way: the best 1 of each labelled pair's 8 (31 pairs, twice as selective; the same set)
    "pretrain+8per-top1": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8}, _top(1)),
    # twice the draws for the same 2 kept per labelled pair: more choice for the validator, same set size
    "pretrain+16per-top2": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 16}, _TOP2),
    # the same choices with the kept lesions' size bands in the shares drawn (the validator prefers large jitters)
    "pretrain+8per-top2-bands": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8},
                                        {**_TOP2, "keep_bands": True}),
    "pretrain+16per-top2-bands": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 16},
                                         {**_TOP2, "keep_bands": True}),
    # more pairs per real image, all of them (no narrowing): is the set's size or diversity the limit?
    "pretrain+8per-sde25": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8}),
    "pretrain+16per-sde25": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 16}),
    # the other kinds, with the winning recipe (pretraining without masks, 8 per pair, the best 2 kept): by the
    # label-fidelity test mask2image and edge-text draw the more faithful pairs (docs/results.md)
    "pretrain+mask2image-8per-top2": Variant(_PRETRAIN, _MASK2IMAGE, _TOP2),
    # BUSI's screen (session 28): the mask2image pairs at half the synthetic:real ratio (the set reused, rows only)
    "pretrain+mask2image-8per-top2+ratio0.5": Variant(_PRETRAIN, _MASK2IMAGE, _TOP2, arm=_mix(0.5)),
    # BUSI's mask2image headline arm (session 29: +3.7 % on test) with its set's kept pairs doubled (the best 4 of
    # each labelled pair's 8: 256 pairs, half as selective), or its pairs in the first half of the segmenter's steps
    # only (the MRI lever); the same set (session 30)
    "pretrain+mask2image-8per-top4": Variant(_PRETRAIN, _MASK2IMAGE, _top(4)),
    "pretrain+mask2image-8per-top2+until0.5": Variant(_PRETRAIN, _MASK2IMAGE, _TOP2,
                                                      arm=_mix(1, synthetic_until=0.5)),
    # and its pairs joined to the inpainted ones of the earlier BUSI arm (each kind's best 2 of 8 per labelled pair:
    # 256 pairs): the faithful whole-image kind and the realistic lesions painted into the lesion-free images
    "pretrain+mask2image-8per-top2+inpaint": Variant(_PRETRAIN, _MASK2IMAGE, _TOP2, join="pretrain+8per-top2"),
    "pretrain+edge-text-8per-top2": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8, "method": "edge-guided",
                                                        "config": "generator-edge-text-{preset}-cpu.yaml"},
                                            _TOP2),
    # the headline's pairs, but painted onto the labelled image each jittered mask comes from (its own lesion
    # repainted inside the joined mask) instead of onto the lesion-free frames: all of them, or every other one;
    # the same generator (only the set is new)
    "pretrain+8per-top2+repaint": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8, "repaint_share": 1.0}, _TOP2),
    "pretrain+8per-top2+repaint0.5": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8, "repaint_share": 0.5}, _TOP2),
    # copy-paste's own pairs re-drawn by the generator: each draw starts from a real lesion pasted onto a frame
    # (the copy-paste-onto-backgrounds pair of the same index) noised to this share of the schedule (SDEdit), so
    # the lesion keeps its real size and layout but gets new texture and a border drawn into the frame; the best
    # 2 of 8 per labelled pair kept; the same generator (only the set is new)
    "pretrain+8per-top2+paste0.5": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8, "paste_strength": 0.5}, _TOP2),
    "pretrain+8per-top2+paste0.3": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8, "paste_strength": 0.3}, _TOP2),
    # the headline's pairs, with the loss leaving out their labels' border band (1 or 2 pixels at 64 px): a painted
    # lesion and the mask it was asked to fill disagree at the border, where Dice is decided (segment/losses.py);
    # the same set, only the segmenter's loss changes (with --union, the joined row's too)
    "pretrain+8per-top2+border1": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8}, _TOP2,
                                          arm=_mix(1, synthetic_border_ignore=1)),
    "pretrain+8per-top2+border2": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8}, _TOP2,
                                          arm=_mix(1, synthetic_border_ignore=2)),
    # the headline's recipe at a lower synthetic:real ratio (the MRI levers of docs/volumes.md)
    "pretrain+8per-top2+ratio0.25": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8}, _TOP2, arm=_mix(0.25)),
    # the headline's pairs in the first half of the steps only, then the real pairs alone (fine-tuning on real):
    # the real slices of a structure's thin ends, where the MRI arms lose (docs/volumes.md), get the last half whole
    "pretrain+8per-top2+until0.5": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8}, _TOP2,
                                           arm=_mix(1, synthetic_until=0.5)),
    # the same for the last quarter of the steps (session 27, Kvasir-SEG: with --union the joined arm, the headline's
    # best, gets the same mixing: do the pairs and the pasted lesions help most early, before the real pairs alone?)
    "pretrain+8per-top2+until0.75": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8}, _TOP2,
                                            arm=_mix(1, synthetic_until=0.75)),
    # masks jittered in shape only, where they are: a structure bound to its anatomical place (the hippocampus in
    # its MRI crop) is not moved off it (no shift, up to 10 degrees of rotation); the same generator, a new set
    "pretrain+8per-top2+in-place": Variant(_PRETRAIN, _IN_PLACE, _TOP2),
    # the two MRI levers that each recovered part of the loss, together (session 22): masks kept in place, and
    # the pairs for the first half of the steps only / at ratio 0.25; the in-place set reused
    "pretrain+8per-top2+in-place+until0.5": Variant(_PRETRAIN, _IN_PLACE, _TOP2, arm=_mix(1, synthetic_until=0.5)),
    "pretrain+8per-top2+in-place+ratio0.25": Variant(_PRETRAIN, _IN_PLACE, _TOP2, arm=_mix(0.25)),
    # the promoted MRI recipe's share of the steps bracketed (session 24): the in-place pairs for the first quarter
    # or three quarters of the steps; at 2000 steps the test gain of the first half was a fifth of its val gain
    # (docs/volumes.md), and the loss left is at the thin ends; the in-place set reused
    "pretrain+8per-top2+in-place+until0.25": Variant(_PRETRAIN, _IN_PLACE, _TOP2, arm=_mix(1, synthetic_until=0.25)),
    "pretrain+8per-top2+in-place+until0.75": Variant(_PRETRAIN, _IN_PLACE, _TOP2, arm=_mix(1, synthetic_until=0.75)),
    # and its ratio halved: 1 synthetic pair to 2 real ones in the first half of the steps
    "pretrain+8per-top2+in-place+until0.5+ratio0.5": Variant(
        _PRETRAIN, _IN_PLACE, _TOP2, arm=_mix(0.5, synthetic_until=0.5)),
    # the promoted MRI recipe keeping the best 4 (or 1) of each labelled slice's 8 draws instead of 2: twice the
    # pairs and half as selective, or the other way (session 27; the in-place set reused, only the filter and the
    # segmenters are new)
    "pretrain+8per-top4+in-place+until0.5": Variant(_PRETRAIN, _IN_PLACE, _top(4), arm=_mix(1, synthetic_until=0.5)),
    "pretrain+8per-top1+in-place+until0.5": Variant(_PRETRAIN, _IN_PLACE, _top(1), arm=_mix(1, synthetic_until=0.5)),
    # the promoted MRI recipe with the draws shifted to the thin ends, where its loss is left (docs/volumes.md): the
    # masks of a structure's end slices drawn twice as often as the middle ones, for the same number of draws, so
    # the best 2 kept of each end slice are chosen from about twice as many (the drawn small pairs are the least
    # faithful); a new set from the same generator
    "pretrain+8per-top2+in-place+until0.5+ends2": Variant(
        _PRETRAIN, {**_IN_PLACE, "jitter": {**_IN_PLACE["jitter"], "ends_weight": 2}}, _TOP2,
        arm=_mix(1, synthetic_until=0.5)),
    # every labelled mask drawn equally often (8 each) instead of 8 per pair on average at random, which left 2 of
    # Kvasir-SEG N = 64's masks undrawn (session 20, docs/quality.md): the same generator, a new set
    "pretrain+8per-top2+even": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8, "jitter": {"even": True}}, _TOP2),
    # a longer training budget: twice the fine-tuning steps on the labelled pairs (2000), the cached pretrained base
    # reused as it is (its settings are the headline's: only the tuning's steps change); the headline's selection
    "pretrain+8per-top2+tune2000": Variant({**_PRETRAIN, "steps": 2000}, {**_SDE25, "n_per_real": 8}, _TOP2),
    # tuning twice as long was worse on both seeds (session 25: the generator fits the N pairs too closely), so
    # the other way: half the tuning on the labelled pairs (the cached base reused), or twice the pretraining on
    # every image without a mask (a new base, then the headline's 1000 steps of tuning); the headline's selection
    "pretrain+8per-top2+tune500": Variant({**_PRETRAIN, "steps": 500}, {**_SDE25, "n_per_real": 8}, _TOP2),
    "pretrain2000+8per-top2": Variant({**_PRETRAIN, "pretrain_steps": 2000}, {**_SDE25, "n_per_real": 8}, _TOP2),
    # the whole-image kind's realism (BUSI's mask2image pairs: FID 31 against real test, the inpainted ones 2.6):
    # twice the pretraining on every image without a mask (a new base, then the same 1000 tuning steps) for BUSI's
    # mask2image arm (session 31); the headline's selection and mixing otherwise
    "pretrain2000+mask2image-8per-top2": Variant({**_PRETRAIN, "pretrain_steps": 2000}, _MASK2IMAGE, _TOP2),
    # size-controlled masks for BUSI's mask2image arm (session 31): new lesion masks of real shapes at drawn sizes,
    # the small and medium bands drawn twice as often as their real shares, where whole images are drawn around
    # them (no source pair); 512 draws, the best quarter of each size band kept (128, as the best 2 of 8 per
    # labelled pair), so the kept pairs keep the drawn sizes
    "pretrain+mask2image-size2-8per-share0.25": Variant(
        _PRETRAIN, {**_MASK2IMAGE, "mask_source": "size", "small_boost": 2.0}, _SHARE25),
    # the same masks for the headline's inpainted pairs (Kvasir-SEG): painted into the lesion-free frames, the best
    # quarter of each band's 8-per-labelled-pair draws kept; the first pass's size masks (no selection) were its
    # best single lever after the selection (session 9: 0.705 on one seed), never tried with it
    "pretrain+size2-8per-share0.25": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8, "mask_source": "size",
                                                          "small_boost": 2.0}, _SHARE25),
    # FreeMask's noisy-region filter (session 32): the kept pairs as they are, but the loss leaves out each pixel
    # whose loss under the set's validator is above 1.25x that validator's mean loss on real val pixels of its class
    # (validate/pixel_trust.py): lesion tissue painted outside a mask, a mask corner left unpainted; the same sets,
    # only the segmenters are new (with --union, the joined row's diffusion pairs too; its pasted lesions are real)
    "pretrain+8per-top2+pixel1.25": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8}, _TOP2,
                                            arm=_mix(1, synthetic_pixel_filter=1.25)),
    "pretrain+mask2image-8per-top2+pixel1.25": Variant(_PRETRAIN, _MASK2IMAGE, _TOP2,
                                                       arm=_mix(1, synthetic_pixel_filter=1.25)),
    "pretrain+8per-top2+pixel1.25-background": Variant(
        _PRETRAIN, {**_SDE25, "n_per_real": 8}, _TOP2,
        arm=_mix(1, synthetic_pixel_filter=1.25, synthetic_pixel_filter_class="background")),
    "pretrain+mask2image-8per-top2+pixel1.25-background": Variant(
        _PRETRAIN, _MASK2IMAGE, _TOP2,
        arm=_mix(1, synthetic_pixel_filter=1.25, synthetic_pixel_filter_class="background")),
    "pretrain+8per-top2+in-place+until0.5+pixel1.25": Variant(
        _PRETRAIN, _IN_PLACE, _TOP2, arm=_mix(1, synthetic_until=0.5, synthetic_pixel_filter=1.25)),
    # the same, background pixels only: the validator sees hippocampus where the mask says none (drawn tissue
    # outside the mask, docs/volumes.md's hypothesis for the thin ends), the label pixels all kept
    "pretrain+8per-top2+in-place+until0.5+pixel1.25-background": Variant(
        _PRETRAIN, _IN_PLACE, _TOP2, arm=_mix(1, synthetic_until=0.5, synthetic_pixel_filter=1.25,
                                              synthetic_pixel_filter_class="background")),
    # classifier-free guidance (session 33): the headline's generators trained with the prompt / class dropped 10 %
    # of the time, but every set was drawn at scale 1 (the conditional prediction alone; set with 100-step DDPM in
    # session 7, when guidance 2 with deterministic DPM-Solver++ speckled). With the stochastic sampler the headline
    # uses now, does guidance paint lesions that fill their masks more often, so the best 2 of 8 are better pairs?
    # (Kvasir-SEG: more faithful pairs, rows level with scale 1; BUSI's inpainted pairs at scale 3: far more
    # faithful, promoted over the mask2image arm; the mask2image kind guided by its class: below; docs/results.md,
    # "Session 33")
    "pretrain+8per-top2+cfg2": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8, "guidance_scale": 2.0}, _TOP2),
    "pretrain+8per-top2+cfg3": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8, "guidance_scale": 3.0}, _TOP2),
    "pretrain+8per-top2+cfg5": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8, "guidance_scale": 5.0}, _TOP2),
    "pretrain+mask2image-8per-top2+cfg3": Variant(_PRETRAIN, {**_MASK2IMAGE, "guidance_scale": 3.0}, _TOP2),
    # mask guidance (session 34): the MRI generator has no prompt or class, but pretraining on slices without masks
    # taught it "mask unknown" (models.unknown_mask), so guidance can weigh the label mask against no mask. Drawn
    # unguided, most in-place draws barely show the structure where the mask says; guided they do. Guidance only
    # within 4 pixels of the mask: guided everywhere, the whole slice brightens visibly (the twins' global
    # brightness differs); the promoted MRI recipe otherwise (in place, pairs in the first half of the steps).
    # Scales 2 and 3: level with it (the larger pairs more faithful, the small ones less, a speckled rim;
    # docs/results.md "Session 34"); scale 1.5: +0.003 [-0.004, +0.010], above on both seeds, not promoted
    "pretrain+8per-top2+in-place+until0.5+mask-cfg2": Variant(
        _PRETRAIN, {**_IN_PLACE, "guidance_scale": 2.0, "mask_guidance": True, "guidance_region": 4}, _TOP2,
        arm=_mix(1, synthetic_until=0.5)),
    "pretrain+8per-top2+in-place+until0.5+mask-cfg1.5": Variant(
        _PRETRAIN, {**_IN_PLACE, "guidance_scale": 1.5, "mask_guidance": True, "guidance_region": 4}, _TOP2,
        arm=_mix(1, synthetic_until=0.5)),
    "pretrain+8per-top2+in-place+until0.5+mask-cfg3": Variant(
        _PRETRAIN, {**_IN_PLACE, "guidance_scale": 3.0, "mask_guidance": True, "guidance_region": 4}, _TOP2,
        arm=_mix(1, synthetic_until=0.5)),
    # the same on BUSI's mask2image kind (its class nulled with the mask): class guidance alone was below scale 1
    "pretrain+mask2image-8per-top2+mask-cfg2": Variant(
        _PRETRAIN, {**_MASK2IMAGE, "guidance_scale": 2.0, "mask_guidance": True, "guidance_region": 4}, _TOP2),
    # the headline's drawn lesions as copy-paste donors (session 36): copy-paste on the real half of each batch takes
    # half its lesions from the kept synthetic pairs (a generated polyp cut with its mask, pasted onto a real
    # frame) instead of the other real pairs, so the pasted lesions are three times as many distinct ones; the
    # same set, only the segmenters are new (with --union, the joined row's too, whose pasted pairs are not donors)
    "pretrain+8per-top2+donors0.5": Variant(_PRETRAIN, {**_SDE25, "n_per_real": 8}, _TOP2,
                                            arm={"copy_paste": {"prob": 0.5, "synthetic_donors": 0.5}}),
    "pretrain+size": Variant(_PRETRAIN, {"mask_source": "size"}),
    # the two best single levers of the first pass together (same set as pretrain+size)
    "pretrain+size+ratio0.5": Variant(_PRETRAIN, {"mask_source": "size"}, arm=_mix(0.5)),
}
#: The generator entry the variants change: the headline config's ``synthetic`` arm's (``inpaint`` on Kvasir-SEG and
#: BUSI, ``mask2image`` on the MRI volumes); the screen's rows are defined with this name and take the config's.
GENERATOR = "inpaint"
#: a dataset's name in the generator presets' file names, where it differs
PRESET_NAMES = {"kvasir-seg": "kvasir", "msd-hippocampus": "mri"}
DATASETS = "kvasir-seg, busi or msd-hippocampus"
#: What every variant changes: the headline's first-pass recipe (sessions 7-8: 2000 steps of batch 8 from
#: scratch, 100-step ancestral DDPM, the automatic `contrast` filter threshold). Fixed here, so a variant keeps
#: its meaning when the headline config takes a new recipe (in ``overrides`` a None drops the headline's key).
BASE: dict[str, Any] = {
    "overrides": {"steps": 2000, "batch_size": 8, "pretrain_steps": None},
    "sampler": "ddpm", "sampling_steps": 100, "guidance_scale": 1.0, "eta": None, "mask_source": "jitter",
    "jitter": None,
    "filter": {"threshold": "auto", "auto_rule": "contrast", "keep_best": None},
}
#: Reduced segmentation budget (the headline: 2000 steps, validation every 100); same network and augmentation.
STEPS, VAL_INTERVAL, SEEDS = 400, 50, (0, 1)
#: Real-data rows, trained once per budget; their names are the headline's arm names.
REAL_ARMS = (ArmSettings(name="baseline", kind="baseline"),
             ArmSettings(name="copy-paste", kind="copy-paste", copy_paste={"prob": 0.5}))
#: Rows of every variant: (a) its synthetic pairs alone, (b) the N real pairs plus them (the headline arm).
VARIANT_ARMS = (
    ArmSettings(name="synthetic", kind="synthetic", generator=GENERATOR, mixing={"mode": "ratio", "ratio": 1},
                filtered=False),
    ArmSettings(name="synthetic-only", kind="synthetic", generator=GENERATOR, mixing={"mode": "synthetic-only"},
                filtered=False),
)
#: Extra rows of the headline's own variant (``HEADLINE_VARIANT``), whose headline arm exists, for the rank agreement.
AGREEMENT_ARMS = (ArmSettings(name="synthetic+copy-paste", kind="synthetic", generator=GENERATOR,
                              mixing={"mode": "ratio", "ratio": 1}, filtered=False, copy_paste={"prob": 0.5}),)
#: A row of the headline's own variant when the headline has the copy-paste-onto-backgrounds arm: that arm (the
#: pasted set and copy-paste on the real half) with the variant's kept pairs joined to its pasted pairs (generator
#: method ``union``), at the same ratio: do the diffusion pairs add to real lesions pasted onto the backgrounds?
UNION = "pasted+variant"  # the union's generator entry in the row's config
UNION_ARM = ArmSettings(name="synthetic+copy-paste+backgrounds", kind="synthetic", generator=UNION,
                        mixing={"mode": "ratio", "ratio": 1}, filtered=False, copy_paste={"prob": 0.5})
#: The variant the headline configs hold (the screen's winner, session 9): its rows stand for the headline's
#: synthetic arms in the rank agreement (``today`` held the headline's earlier recipe; its rows stay as measured).
HEADLINE_VARIANT = "pretrain+8per-top2"


def headline_config(dataset: str) -> Path:
    return ROOT / "benchmarks" / "configs" / f"{dataset}-cpu.yaml"


def screen_config(config: Path, n: int, variant: str, samples_per_real: int = 2, steps: int = STEPS,
                  val_interval: int = VAL_INTERVAL, seeds: tuple[int, ...] = SEEDS) -> ExperimentConfig:
    """The headline experiment config restricted to N, with the variant's generator and synthesis settings,
    no filter unless the variant keeps the best (the screen scores the unfiltered pairs otherwise; the
    synthetic set's cache key does not include the filter), and the screen's segmentation budget."""
    if variant not in VARIANTS:
        raise typer.BadParameter(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    cfg = load_experiment_config(config, {"n_labelled": [n]})
    gen = headline_generator(cfg)
    spec = cfg.generators[gen]
    filt = None
    if v.filter is not None:
        if spec.filter is None:
            raise typer.BadParameter(f"variant {variant!r} changes the filter; {config} has none")
        filt = {**spec.filter.model_dump(), **BASE.get("filter", {}), **v.filter}
    overrides = {k: x for k, x in {**spec.overrides, **BASE.get("overrides", {}), **v.train}.items() if x is not None}
    fields = {k: x for k, x in BASE.items() if k not in ("overrides", "filter")}
    # another kind's preset for this dataset (kvasir, busi: the preset names' short forms)
    synth = {k: (preset_path(x.format(preset=PRESET_NAMES.get(cfg.dataset.name, cfg.dataset.name)))
                 if k == "config" else x) for k, x in v.synth.items()}
    # validated again: a lever that names a wrong field fails here, not after an hour of training
    spec = type(spec).model_validate({**spec.model_dump(), **fields, "overrides": overrides, "filter": filt,
                                      "n_per_real": samples_per_real, **synth})
    seg = cfg.segment.model_copy(update={"steps": steps, "val_interval": val_interval})
    arms = [a for a in cfg.arms if a.generator in (None, gen)]  # the arms whose generator is kept
    return cfg.model_copy(update={"generators": {gen: spec}, "arms": arms, "segment": seg, "seeds": list(seeds)})


def claim_sweep(config: Path) -> None:
    """The screen works inside the headline sweep's folder (it shares its caches): claimed as that sweep's, with
    the headline config, so that `lesionforge experiment run` resumes in it."""
    prepare_output(load_experiment_config(config), resume=True, overwrite=False)


def headline_arm(cfg: ExperimentConfig) -> ArmSettings:
    """The headline's synthetic arm: its first arm whose pairs a generator draws (not real lesions pasted, not a
    union of sets): ``synthetic`` on Kvasir-SEG and BUSI, ``synthetic-in-place`` on the MRI volumes."""
    arm = next((a for a in cfg.arms if a.kind == "synthetic" and a.generator in cfg.generators
                and _drawn(cfg.generators[a.generator])), None)
    if arm is None:
        raise typer.BadParameter("the headline config has no synthetic arm drawn by a generator: nothing to screen")
    return arm


def headline_generator(cfg: ExperimentConfig) -> str:
    """The generator entry of the headline's synthetic arm (:func:`headline_arm`): the one the variants change."""
    return headline_arm(cfg).generator


def variant_generator(cfg: ExperimentConfig) -> str:
    """The generator entry of a screen config (:func:`screen_config`; a union row's config holds it as well)."""
    return next(k for k, s in cfg.generators.items() if _drawn(s))


def _drawn(spec: GeneratorSpec) -> bool:
    """A generator entry whose pairs a generator draws: not real lesions pasted, not a union of sets."""
    return spec.method not in (PASTE_METHOD, UNION_METHOD)


def prepare(cfg: ExperimentConfig, data: ExperimentData, n: int, poll_s: float = 30.0,
            wait_timeout_s: float = WAIT_TIMEOUT_S) -> SyntheticSet:
    """Train (or reuse) the variant's generator and draw its synthetic set, in the headline's cache. Where another
    screen process draws the same set now (its claim held), wait for it as the sweep runner's workers wait (its
    ``_Wait``: says on what, gives up with a WaitTimeoutError naming the claim), then take its set."""
    cache, wait = SyntheticCache(cfg, LesionforgeStages(), data, n), _Wait(n, None, None, poll_s, wait_timeout_s)
    while True:
        try:
            return cache.get(variant_generator(cfg))
        except Busy as busy:
            time.sleep(wait.tick([(str(busy), busy.lock)]))


def paste_rows(config: Path, base_cfg: ExperimentConfig) -> tuple[ExperimentConfig, ArmSettings, str] | None:
    """The headline's copy-paste-onto-backgrounds arm at the screen's budget (config, arm, generator name), or
    None when the headline has none; its pasted set is the headline's own (same cache)."""
    full = load_experiment_config(config, {"n_labelled": base_cfg.n_labelled})
    for arm in full.arms:
        spec = full.generators.get(arm.generator or "")
        if spec is not None and spec.method == PASTE_METHOD:
            cfg = full.model_copy(update={"generators": {arm.generator: spec}, "arms": [arm],
                                          "segment": base_cfg.segment, "seeds": base_cfg.seeds})
            return cfg, arm, arm.generator
    return None


def union_config(vcfg: ExperimentConfig, paste: tuple[ExperimentConfig, ArmSettings, str],
                 variant: str | None = None) -> ExperimentConfig:
    """The config of the :data:`UNION_ARM` row: the variant's generator, the headline's pasted set, their union;
    a variant that changes its arm's mixing (e.g. ratio 0.5) or copy-paste (e.g. synthetic donors) changes the
    union row's the same way (its copy-paste keys over the pasted arm's)."""
    pcfg, parm, pname = paste
    gen = variant_generator(vcfg)
    union = GeneratorSpec(method=UNION_METHOD, of=[gen, pname])
    change = (VARIANTS[variant].arm or {}) if variant is not None else {}
    arm = UNION_ARM.model_copy(update={"copy_paste": parm.copy_paste})
    if change:  # validated as the stage's MixConfig / CopyPasteConfig, as variant_arms does
        dumped = arm.model_dump()
        arm = ArmSettings.model_validate({**dumped, **({"mixing": change["mixing"]} if "mixing" in change else {}),
                                          "copy_paste": {**(dumped["copy_paste"] or {}),
                                                         **change.get("copy_paste", {})}})
    return vcfg.model_copy(update={"generators": {gen: vcfg.generators[gen],
                                                  pname: pcfg.generators[pname], UNION: union}, "arms": [arm]})


def platform() -> str:
    """What a row's numbers depend on beyond its settings and seed: the torch build and the CPU's vector ISA. The
    segmenter is deterministic on one platform (a row trained again gives the same digits), not across them: on an
    AVX2-only CPU the baseline's seed-0 row at 800 steps scored 0.679, in the file (another machine) 0.660, a
    seed's spread (session 36). Rows of one screen file are compared seed by seed, so they share one platform."""
    facts = machine_facts()
    return f"torch {facts['torch']}, CPU {facts['cpu_capability']}"


def file_rows(out: dict) -> list[tuple[str, str, dict]]:
    """Every row summary of a screen file as (section, arm, summary): section ``real`` for the real rows, else the
    variant's name (also the rows' folder under the screen's: ``<section>/<arm>/seed<s>``)."""
    rows = [("real", a, r) for a, r in out.get("real", {}).items()]
    return rows + [(v, a, r) for v, e in out.get("variants", {}).items() for a, r in e.get("arms", {}).items()]


def foreign_rows(out: dict, here: str) -> dict[str, str | None]:
    """The rows of a screen file (``real`` and ``<variant>:<row>``) not trained on platform ``here``, each with its
    platform (None: a summary that did not record it, written before session 36, counts as another's)."""
    return {a if v == "real" else f"{v}:{a}": r.get("platform") for v, a, r in file_rows(out)
            if r.get("platform") != here}


def screen_file(results: Path, dataset: str, n: int, steps: int, existing: bool = False) -> Path:
    """The screen's JSON for a budget: one file per budget, the default one the screen's, others (e.g. a longer
    segmenter) beside it with their ``-s<steps>``; with ``existing``, a missing file is a clear error."""
    path = results / (f"screen-{dataset}-n{n}" + ("" if steps == STEPS else f"-s{steps}") + "-cpu.json")
    if existing and not path.is_file():
        raise typer.BadParameter(f"{path}: no screen file (run `screen.py run` first)")
    return path


def screen_dir(cfg: ExperimentConfig, n: int) -> Path:
    return cfg.output / "screen" / f"n{n}-steps{cfg.segment.steps}"


def run_row(cfg: ExperimentConfig, data: ExperimentData, n: int, arm: ArmSettings, seed: int, folder: Path,
            synthetic: SyntheticSet | None, wait: bool = True) -> dict | None:
    """One segmenter at the screen budget, through the runner's own stage, selected and scored on ``val``
    (``run_arm`` scores the data's ``test``: here that is ``val``). Cached as ``row.json`` in ``folder``. Two
    screens share rows (the real ones, a variant's): one trains a row, the other waits for it, or with ``wait``
    False gets None at once and does other rows meanwhile."""
    done = folder / "row.json"
    folder.mkdir(parents=True, exist_ok=True)
    used, drawn = set_identity(synthetic, arm.filtered), set_fingerprint(synthetic, arm.filtered)
    with _locked(folder / "row.lock", wait) as held:
        if not held:
            return None
        if done.is_file():
            row = json.loads(done.read_text(encoding="utf-8"))
            # a row written before rows recorded their set has none to compare (all of them predate a change)
            if row.get("synthetic_set", used) != used:
                raise typer.BadParameter(f"{done} was trained on {row['synthetic_set']}, the variant now draws "
                                         f"{used}: its definition changed; give the new one another name")
            if row.get("synthetic_fingerprint", drawn) != drawn:  # rows written before rows recorded it: unknown
                raise typer.BadParameter(f"{done} was trained on another draw of {used} (content fingerprint "
                                         f"{row['synthetic_fingerprint']}, the set now {drawn}): the set was made "
                                         "again since (another machine or code); screen into a fresh folder")
            if "last_val_mdice" not in row:  # a row written before rows recorded it: from its segmenter's record
                row["last_val_mdice"] = last_val_mdice(folder)
            return row
        on_val = replace(data, test=data.val, subsets={}, transfer={})
        t0 = time.perf_counter()
        out = LesionforgeStages().run_arm(cfg, arm, segment_config_for(cfg, arm, seed), n, on_val, synthetic, folder)
        row = {"arm": arm.name, "seed": seed, "val_mdice": out["mdice"], "ids": out["ids"], "dice": out["dice"],
               "miss_rate": out["miss_rate"], "best_val_mdice": out["best_val_mdice"],
               "seconds": round(time.perf_counter() - t0, 1), "checkpoint": str(folder / "segmenter" / "best"),
               "synthetic_set": used, "synthetic_fingerprint": drawn, "last_val_mdice": last_val_mdice(folder),
               "platform": platform()}
        if (folder / PIXEL_FILTER_FILE).is_file():  # mixing.synthetic_pixel_filter: the pixels it left out
            row["pixel_filter"] = json.loads((folder / PIXEL_FILTER_FILE).read_text(encoding="utf-8"))
        write_json_atomic(done, row)
        return row


def with_done_seeds(wanted: tuple[int, ...], arm_folder: Path) -> list[int]:
    """The seeds a row is summarised over: those asked for and those whose ``row.json`` an earlier run left in
    ``arm_folder`` (``seed<s>/``). A run with ``--seed 2 --seed 3`` after one with ``--seed 0 --seed 1`` then gives
    the 4-seed row, and never a 2-seed summary that replaces the other two seeds in the file."""
    done = {int(p.parent.name[4:]) for p in arm_folder.glob("seed*/row.json") if p.parent.name[4:].isdigit()}
    return sorted(set(wanted) | done)


def filed_rows(summary: dict | None, arm: str) -> dict[int, dict]:
    """The per-seed rows a screen file's summary of one arm holds (seed -> the fields :func:`summarise` reads),
    for a machine that lacks their ``row.json`` (a fresh checkout: the file is committed, the rows are not).
    Only a summary of this machine's :func:`platform` that kept each seed's per-image Dice can give them; its
    seconds are split evenly over its seeds (the file keeps their sum). The caller has already dropped a summary
    of another set (:func:`describe_variant`)."""
    if not summary or "per_image_by_seed" not in summary or summary.get("platform") != platform():
        return {}
    seeds, ids = summary["seeds"], list(summary["per_image"])
    last = summary.get("last_val_mdice_by_seed", [None] * len(seeds))
    return {s: {"arm": arm, "seed": s, "val_mdice": summary["val_mdice_by_seed"][k], "ids": ids,
                "dice": summary["per_image_by_seed"][k], "seconds": summary["seconds"] / len(seeds),
                "last_val_mdice": last[k], "from_file": True, "platform": summary["platform"],
                **({"pixel_filter": summary["pixel_filter"]} if "pixel_filter" in summary else {})}
            for k, s in enumerate(seeds)}


def arm_rows(cfg: ExperimentConfig, data: ExperimentData, n: int, arm: ArmSettings, wanted: tuple[int, ...],
             arm_folder: Path, synthetic: SyntheticSet | None, filed: dict | None = None,
             busy: list[int] | None = None) -> list[dict]:
    """The rows of one arm (``arm_folder/seed<s>``, :func:`run_row`) over :func:`with_done_seeds` and the seeds of
    its summary in the screen file (``filed``): the seeds asked for, trained if missing, and those an earlier run
    finished. A seed whose ``row.json`` is missing but whose numbers the file holds (:func:`filed_rows`) is taken
    from the file, not trained again (the segmenter is deterministic on the CPU: it would give the same row).
    With ``busy`` (a list), a row another screen process is training is left out and its seed appended there,
    instead of waiting for it."""
    known = filed_rows(filed, arm.name)
    rows = []
    for s in sorted(set(with_done_seeds(wanted, arm_folder)) | set(known)):
        if s in known and not (arm_folder / f"seed{s}" / "row.json").is_file():
            rows.append(known[s])
            continue
        row = run_row(cfg, data, n, arm, s, arm_folder / f"seed{s}", synthetic, wait=busy is None)
        if row is not None:
            rows.append(row)
        elif busy is not None:  # run_row gives None only when told not to wait
            busy.append(s)
    return rows


def last_val_mdice(folder: Path) -> float | None:
    """The val mDice of a row's segmenter at its last step (no checkpoint selection), from the segmenter's run
    record (``segment/train.py``'s ``run.json`` history); None where the record is missing. The best-of-every-
    evaluation score a row reports is biased upwards, the more so the more its val curve wavers (session 26)."""
    record = folder / "segmenter" / "run.json"
    if not record.is_file():
        return None
    scored = [h["val_mdice"] for h in json.loads(record.read_text(encoding="utf-8")).get("history", [])
              if h.get("val_mdice") is not None]
    return float(scored[-1]) if scored else None


def fill_from_run_records(out: dict, folder: Path) -> None:
    """Give every row of a screen file whose seeds' run records are all in ``folder`` (the screen's rows, as
    :func:`screen` lays them out) its ``last_val_mdice_by_seed``, and its ``per_image_by_seed`` from the seeds'
    ``row.json``: rows summarised before rows kept them."""
    for section, a, r in file_rows(out):
        path = folder / section / a
        last = [last_val_mdice(path / f"seed{s}") for s in r["seeds"]]
        if None not in last:
            r["last_val_mdice_by_seed"] = last
        done = [path / f"seed{s}" / "row.json" for s in r["seeds"]]
        if "per_image_by_seed" not in r and "per_image" in r and all(f.is_file() for f in done):
            seeds = [json.loads(f.read_text(encoding="utf-8")) for f in done]
            if all(sorted(x["ids"]) == list(r["per_image"]) for x in seeds):  # the rows this summary was made of
                r["per_image_by_seed"] = _by_seed(seeds, list(r["per_image"]))


def set_identity(synthetic: SyntheticSet | None, filtered: bool) -> str | None:
    """The file a row trains on: the set's manifest, or the manifest of its filter's verdicts (named by the
    filter's settings) for a filtered arm."""
    if synthetic is None:
        return None
    return str(synthetic.filtered_manifest if filtered and synthetic.filtered_manifest else synthetic.manifest)


def set_fingerprint(synthetic: SyntheticSet | None, filtered: bool) -> str | None:
    """The content of what a row trains on (:func:`set_identity` names only the file, and a set made again on
    another machine, or a filter's code changed, keeps its file name): every drawn file, and for a filtered row
    which of them the filter kept (``experiment/set_fingerprint.py``, the carried runs' check)."""
    if synthetic is None:
        return None
    return fingerprint(synthetic if filtered else replace(synthetic, filtered_manifest=None))["fingerprint"]


@contextmanager
def _locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (released when the process dies); yields whether it is held. Blocking,
    or with ``wait`` False, not taken (yields False) while another process holds it."""
    with open(path, "a", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def summarise(rows: list[dict]) -> dict:
    """Seeds of one arm: mean val mDice, per-seed values, per-image Dice averaged over seeds, and each seed's
    per-image Dice (``per_image_by_seed``, in ``per_image``'s order: :func:`_versus` compares rows over the seeds
    they share)."""
    per_image: dict[str, list[float]] = {}
    for r in rows:
        for i, d in zip(r["ids"], r["dice"], strict=True):
            per_image.setdefault(i, []).append(d)
    last = [r.get("last_val_mdice") for r in rows]
    platforms = {r.get("platform") for r in rows}
    if len(platforms) > 1:
        raise typer.BadParameter(f"the {rows[0]['arm']} rows of seeds {[r['seed'] for r in rows]} were trained on "
                                 f"different platforms {sorted(map(str, platforms))}: their seeds do not compare")
    (where,) = platforms
    return {"val_mdice": float(np.mean([r["val_mdice"] for r in rows])), "seeds": [r["seed"] for r in rows],
            "val_mdice_by_seed": [r["val_mdice"] for r in rows], "seconds": sum(r["seconds"] for r in rows),
            "per_image": {i: float(np.mean(v)) for i, v in sorted(per_image.items())},
            "per_image_by_seed": _by_seed(rows, sorted(per_image)),
            **({"last_val_mdice_by_seed": last} if None not in last else {}),
            # mixing.synthetic_pixel_filter: what it left out of the set (the same for every seed)
            **({"pixel_filter": rows[0]["pixel_filter"]} if "pixel_filter" in rows[0] else {}),
            **({"platform": where} if where is not None else {})}


def _by_seed(rows: list[dict], ids: list[str]) -> list[list[float]]:
    """Each row's per-image Dice in the order of ``ids`` (rounded: the file keeps one list per seed)."""
    dice = [dict(zip(r["ids"], r["dice"], strict=True)) for r in rows]
    return [[round(float(d[i]), 6) for i in ids] for d in dice]


def real_extractor(checkpoint: Path) -> FeatureExtractor:
    """In-domain features (``quality.features.SegEncoder``) from the screen's own real-only segmenter, fed
    images of its own channel count (1 for grey ultrasound)."""
    model = load_segmenter(checkpoint)
    return FeatureExtractor(SegEncoder(model), "seg-encoder-screen-baseline", dir_hash(checkpoint),
                            channels=model.in_channels)


def _kept_arrays(synthetic: SyntheticSet, cfg: ExperimentConfig) -> PairArrays:
    """The pairs a variant's rows train on: all of them, or those the filter kept."""
    filtered = synthetic.filtered_manifest is not None
    rows = read_set(synthetic.filtered_manifest if filtered else synthetic.manifest, kept_only=filtered)
    return load_arrays(rows, cfg.resolution, cfg.dataset.channels, cache_dir=None)


#: What :func:`quality` measures; an entry of another version is measured again (2: label fidelity by size band
#: beside the real val pairs', empty masks counted apart from small lesions)
QUALITY_VERSION = 2


def quality(synthetic: SyntheticSet, cfg: ExperimentConfig, data: ExperimentData, checkpoint: Path) -> dict:
    """Label fidelity (own vs shuffled masks, real-only segmenter) and in-domain KID against real train images,
    of the pairs the rows train on (the kept ones when the variant filters)."""
    arrays = _kept_arrays(synthetic, cfg)
    model = load_segmenter(checkpoint)
    fidelity = own_vs_shuffled(model, arrays)
    # the same segmenter on the real val pairs with a mask: how well it finds a real structure of each size band,
    # the scale against which the synthetic pairs' own-mask Dice by band is read
    fidelity["real_val_by_band"] = own_vs_shuffled(model, data.val.subset(np.flatnonzero(data.val.has_mask)))["by_band"]
    ext = real_extractor(checkpoint)
    real = ext.features(data.pool.images)
    return {"version": QUALITY_VERSION, "label_fidelity": fidelity, "speckle": speckle_of(arrays, data),
            "bands": bands_of(synthetic, arrays, cfg),
            "kid_vs_train": kid(ext.features(arrays.images), real),
            "kid_val_vs_train": kid(ext.features(data.val.images), real),  # a real set's KID, for scale
            "extractor": ext.describe()}


def bands_of(synthetic: SyntheticSet, used: PairArrays, cfg: ExperimentConfig) -> dict:
    """Lesion size bands (protocol) of the pairs drawn and of those the rows train on: a filter that keeps
    only large lesions narrows what is synthesized, whatever it does to val mDice."""
    drawn = load_arrays(read_set(synthetic.manifest), cfg.resolution, cfg.dataset.channels, cache_dir=None)

    def count(a: PairArrays) -> dict[str, int]:
        names = [mask_group(m) for m in a.masks]  # an empty mask (a negative slice) counted apart, not as small
        return {b: names.count(b) for b in (*BANDS, EMPTY)}

    return {"drawn": count(drawn), "used": count(used)}


def speckle_of(arrays: PairArrays, data: ExperimentData) -> dict:
    """High-frequency energy inside the lesions (:func:`~lesionforge.quality.metrics.speckle`), of the synthetic
    pairs and of the real labelled train pairs (the reference): a few-step sampler's leftover noise shows here."""
    real = data.pool.subset(np.flatnonzero(data.pool.has_mask))
    return {"synthetic": speckle(arrays.images, arrays.masks), "real_train": speckle(real.images, real.masks)}


def screen(config: Path, n: int, variants: list[str], results: Path, headline: Path | None = None,
           command: str | None = None, agree_with: str = HEADLINE_VARIANT, union: bool = False,
           gate_rows_only: bool = False, joined_only: bool = False, **budget) -> dict:
    """Screen ``variants`` (generators trained or reused) with the experiment ``config``'s data, generator and
    segmenter (``budget``: :func:`screen_config`'s steps, val_interval, seeds, samples_per_real); write the JSON
    and Markdown after every row. ``headline``: the result file the rank agreement compares with;
    ``agree_with``: the variant whose rows stand for its synthetic arms (screened with its synthetic +
    copy-paste row, and the headline's copy-paste-onto-backgrounds arm, when it is among ``variants``);
    ``union``: every variant also gets the :data:`UNION_ARM` row (its pairs joined to the pasted ones), not only
    ``agree_with``, and the pasted arm's row is trained for the comparison; ``gate_rows_only``: only the rows the
    gate judges (real + pairs, and the joined row), not the pairs alone nor the rank agreement's extra row;
    ``joined_only``: of each variant only the joined row (implies ``union``), for a lever of copy-paste or of the
    joined row's mixing, judged against the headline recipe's joined row."""
    union = union or joined_only
    base_cfg = screen_config(config, n, "today", **budget)
    paste = paste_rows(config, base_cfg)
    held = screen_config(config, n, agree_with, **budget)
    recipe, gen = held.generators[variant_generator(held)].model_dump(mode="json"), variant_generator(held)
    dataset, seeds = base_cfg.dataset.name, tuple(base_cfg.seeds)
    out_path = screen_file(results, dataset, n, base_cfg.segment.steps)
    out = json.loads(out_path.read_text(encoding="utf-8")) if out_path.is_file() else {}
    here = platform()
    if foreign := foreign_rows(out, here):
        raise typer.BadParameter(
            f"{out_path}: rows {list(foreign)[:3]}{' …' if len(foreign) > 3 else ''} were trained on "
            f"{sorted({w or 'a platform the file did not record' for w in foreign.values()})}, this machine is "
            f"{here}: the same seed "
            "trains another row here, and one file's rows are compared seed by seed; screen into another folder "
            "(--results)")
    claim_sweep(config)
    scores = headline_scores(headline)  # the gate's reference arm: read once, not at every save
    data = LesionforgeStages().load_data(base_cfg)
    folder = screen_dir(base_cfg, n)
    out.update(dataset=dataset, n_labelled=n, profile="cpu", resolution=base_cfg.resolution, platform=here,
               machine="2-core CPU, shared with other jobs, torch threads 1",
               segment={"network": base_cfg.segment.network, "steps": base_cfg.segment.steps,
                        "val_interval": base_cfg.segment.val_interval, "seeds": list(seeds),
                        "selection": "best val mDice", "scored_on": "val"},
               code_version=code_version(), command=command)
    out.setdefault("real", {})
    out.setdefault("variants", {})

    def save() -> None:
        # another screen process (other variants) may have written the file since: keep its variants and rows
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder / f"{out_path.stem}.results.lock"):
            if out_path.is_file():
                now = json.loads(out_path.read_text(encoding="utf-8"))
                # a row summarised over more seeds (another process ran them) wins over this one's
                out["real"] = {a: max(r, now.get("real", {}).get(a, r), key=lambda x: len(x["seeds"]))
                               for a, r in {**now.get("real", {}), **out["real"]}.items()}
                out["variants"] = {**now.get("variants", {}), **{v: out["variants"][v] for v in made}}
            out["agreement"] = agreement(out, headline, agree_with, recipe, gen)
            out["gate"] = gate(out, agree_with, scores)
            write_json_atomic(out_path, out)
            write_report(out, out_path.with_suffix(".md"))

    # the real-only segmenter of seed 0 scores the label fidelity and gives the in-domain KID features
    checkpoint = folder / "real" / "baseline" / "seed0" / "segmenter" / "best"
    made: dict[str, tuple[ExperimentConfig, SyntheticSet]] = {}
    later: list[Callable[[], None]] = []  # rows another screen process was training: summarised at the end

    def rows_into(where: tuple[str, ...], acfg: ExperimentConfig, arm: ArmSettings, wanted: tuple[int, ...],
                  arm_folder: Path, aset: SyntheticSet | None, wait: bool = False) -> None:
        """One arm's rows summarised into ``out[where...][arm.name]`` (looked up now: ``save`` replaces the file's
        sections). A row another screen process is training (two workers, one per core, on the same seeds) is not
        waited for: this one trains the rows after it meanwhile, and summarises that arm again at the end, waiting
        then."""
        into = out
        for key in where:
            into = into.setdefault(key, {})
        busy: list[int] | None = None if wait else []
        rows = arm_rows(acfg, data, n, arm, wanted, arm_folder, aset, into.get(arm.name), busy)
        if busy:
            later.append(lambda: rows_into(where, acfg, arm, wanted, arm_folder, aset, wait=True))
        if rows:
            new = summarise(rows)
            # a summary over more seeds (an earlier run with more --seed) is kept, not replaced by fewer
            into[arm.name] = max(new, into.get(arm.name, new), key=lambda r: len(r["seeds"]))
            save()

    for k in range(len(seeds)):  # every row's first seed before any second seed: partial results rank all rows
        for arm in REAL_ARMS:
            rows_into(("real",), base_cfg, arm, seeds[:k + 1], folder / "real" / arm.name, None)
        if paste is not None and (agree_with in variants or union):  # the fair copy-paste twin
            pcfg, parm, pname = paste
            pasted = SyntheticCache(pcfg, LesionforgeStages(), data, n).get(pname)
            rows_into(("real",), pcfg, parm, seeds[:k + 1], folder / "real" / parm.name, pasted)
        for v in variants:
            if v not in made:
                vcfg = screen_config(config, n, v, **budget)
                made[v] = (vcfg, prepare(vcfg, data, n))
                joined = joined_set(config, n, v, made[v][1], data, folder, **budget)
                out["variants"][v] = describe_variant(out["variants"].get(v, {}), v, made[v][1], joined)
                made[v] = (vcfg, joined or made[v][1])
            cfg, synthetic = made[v]
            entry = out["variants"][v]
            if entry.get("quality", {}).get("version") != QUALITY_VERSION:  # not measured, or measured otherwise
                if checkpoint.parents[1].is_dir():  # another screen process may still be training that segmenter
                    with _locked(checkpoint.parents[1] / "row.lock"):
                        pass
                entry["quality"] = quality(synthetic, cfg, data, checkpoint)
            # the rows the rank agreement needs first (a partial run still ranks the headline's arms)
            arms_of = variant_arms(v, agree_with, gen)[:0 if joined_only else 1 if gate_rows_only else None]
            rows_of = [(arm, cfg, synthetic) for arm in arms_of]
            if (v == agree_with or union) and paste is not None:
                ucfg = union_config(cfg, paste, v)
                at = len(rows_of) - sum(a.name == VARIANT_ARMS[1].name for a, _, _ in rows_of)  # before pairs alone
                rows_of.insert(at, (ucfg.arms[0], ucfg, SyntheticCache(ucfg, LesionforgeStages(), data, n).get(UNION)))
            for arm, acfg, aset in rows_of:
                rows_into(("variants", v, "arms"), acfg, arm, seeds[:k + 1], folder / v / arm.name, aset)
    for redo in later:
        redo()
    return out


def joined_set(config: Path, n: int, v: str, own: SyntheticSet, data: ExperimentData, folder: Path,
               **budget) -> SyntheticSet | None:
    """The set variant ``v``'s rows train on when it joins another variant's pairs (``Variant.join``): its own
    pairs (the kept ones, if it filters) and the other's, linked into ``folder/<v>/joined-set`` by the runner's
    own union (``experiment/union_set.py``); None for a variant that joins nothing. The other set is trained and
    drawn as that variant's own screen would (shared cache)."""
    other = VARIANTS[v].join
    if other is None:
        return None
    if VARIANTS[other].join is not None:
        raise typer.BadParameter(f"variant {v!r} joins {other!r}, which joins another: join a set, not a union")
    ocfg = screen_config(config, n, other, **budget)
    parts = {"own": (own, VARIANTS[v].filter is not None), "joined": (prepare(ocfg, data, n),
                                                                     VARIANTS[other].filter is not None)}
    work = folder / v / "joined-set"
    work.mkdir(parents=True, exist_ok=True)
    with _locked(work / "build.lock"):  # made in seconds, from links; two screens of the variant build it once each
        return write_union_set(parts, work)


def variant_arms(name: str, agree_with: str = HEADLINE_VARIANT,
                 generator: str = GENERATOR) -> tuple[ArmSettings, ...]:
    """The rows of variant ``name``, those the rank agreement needs first (a partial run still ranks the
    headline's arms: ``agree_with`` also gets its synthetic + copy-paste row); a filtered variant trains on the
    kept samples; a mixing variant has no synthetic-only row of its own. ``generator``: the screen config's entry
    (:func:`variant_generator`)."""
    v = VARIANTS[name]
    # a joined set (``Variant.join``) holds the kept pairs of its parts already: its rows train on all of it
    update: dict[str, Any] = {"filtered": v.filter is not None and v.join is None, "generator": generator}
    # validated: the arm's dicts become the stage's MixConfig / CopyPasteConfig
    main = ArmSettings.model_validate({**VARIANT_ARMS[0].model_dump(), **update, **(v.arm or {})})
    extra = tuple(a.model_copy(update=update) for a in AGREEMENT_ARMS) if name == agree_with and not v.arm else ()
    rest = () if v.arm else tuple(a.model_copy(update=update) for a in VARIANT_ARMS[1:])
    return (main,) + extra + rest


def describe_variant(entry: dict, v: str, synthetic: SyntheticSet, joined: SyntheticSet | None = None) -> dict:
    """The variant's settings and costs: generator (and pretrained base) training seconds, synthesis (of its own
    set ``synthetic``; the rows of a variant that joins another's pairs train on ``joined``). An entry
    measured on another set (:func:`set_identity`, :func:`set_fingerprint`) gets its quality measured again, and
    its rows, known to be of another set, move to ``earlier_sets``: one entry's rows are all of one set."""
    used, filtered = (joined, False) if joined is not None else (synthetic, VARIANTS[v].filter is not None)
    now, drawn = set_identity(used, filtered), set_fingerprint(used, filtered)
    # an entry written before entries named their set, or recorded its content, cannot be told apart: its rows stay
    if entry.get("set") not in (None, now) or entry.get("set_fingerprint", drawn) != drawn:
        earlier = {k: entry[k] for k in ("set", "set_fingerprint", "arms") if k in entry}
        entry = {k: x for k, x in entry.items() if k not in ("set", "set_fingerprint", "arms", "quality")}
        if earlier.get("arms"):
            entry["earlier_sets"] = [*entry.get("earlier_sets", []), earlier]
    elif "set_fingerprint" not in entry:  # (written with its set's name): its quality is measured again
        entry = {k: x for k, x in entry.items() if k != "quality"}
    base = read_meta(synthetic.info["generator_dir"]).get("pretrained_base")
    base_s = read_meta(base).get("train_seconds") if base else None
    timings = synthetic.info["timings"]
    return {**entry, **VARIANTS[v].describe(), "set": now, "set_fingerprint": drawn,
            "n_kept": used.info.get("n_kept"), **({"joined_parts": joined.info["parts"]} if joined else {}),
            "generator_dir": synthetic.info["generator_dir"],
            "pretrained_base": base, "base_train_s": base_s,
            "generator_train_s": (timings.get("generator_train_s") or 0) + (base_s or 0),
            "synthesize_s": timings.get("synthesize_s"), "n_synthetic": synthetic.info["n_generated"]}


#: The generator-entry fields that make a recipe (paths and batch sizes of inference left out).
RECIPE_FIELDS = ("method", "overrides", "n_per_real", "mask_source", "small_boost", "sampler", "sampling_steps",
                 "guidance_scale", "eta", "mask_guidance", "guidance_region", "use_unlabelled",
                 "jitter")


def recipe_of(settings: dict) -> dict:
    """The recipe part of a generator entry's settings (as a result file stores them): the fields that decide
    which pairs are drawn, and the filter's choice of them."""
    f = settings.get("filter") or {}
    return {**{k: settings.get(k) for k in RECIPE_FIELDS},
            "filter": None if not f else {k: f.get(k) for k in ("validator", "threshold", "auto_rule", "keep_best",
                                                                  "keep_share")}}


#: Headline arms screened as another variant's row: arm -> (variant, row). The headline's `synthetic-redrawn` arm is
#: the `synthetic` row of the variant it was chosen from (BUSI's `synthetic-mask2image` likewise), so the rank
#: agreement covers it too.
HEADLINE_ROWS_OF_VARIANTS = {"synthetic-redrawn": ("pretrain+8per-top2+paste0.5", "synthetic"),
                             "synthetic-in-place": ("pretrain+8per-top2+in-place+until0.5", "synthetic"),
                             "synthetic-mask2image": ("pretrain+mask2image-8per-top2", "synthetic"),
                             "synthetic-mask2image-until0.5": ("pretrain+mask2image-8per-top2+until0.5", "synthetic"),
                             "synthetic-mask2image-guided": ("pretrain+mask2image-8per-top2+mask-cfg2", "synthetic")}


def held_variant(config: Path) -> str:
    """The variant the headline ``config`` holds now: the one its synthetic arm (:func:`headline_arm`) was promoted
    from (:data:`HEADLINE_ROWS_OF_VARIANTS`; on the MRI volumes the in-place recipe since session 23), else
    :data:`HEADLINE_VARIANT`. Its rows stand for the headline's synthetic arms in the rank agreement (the gate holds
    variants to the row of the headline's best synthetic arm instead: :func:`gate_reference`)."""
    arm = headline_arm(load_experiment_config(config)).name
    return HEADLINE_ROWS_OF_VARIANTS[arm][0] if arm in HEADLINE_ROWS_OF_VARIANTS else HEADLINE_VARIANT


def agreement(out: dict, head_path: Path | None, agree_with: str = HEADLINE_VARIANT,
              recipe: dict | None = None, generator: str = GENERATOR) -> dict:
    """Rank agreement of the screen (the real rows and those of ``agree_with``, the variant the headline holds)
    with the headline result's arms; with ``recipe`` (the variant's generator settings) only if the headline
    file was made with that recipe by its entry ``generator`` (an older file of another recipe is not compared)."""
    if head_path is None or not head_path.is_file() or agree_with not in out["variants"]:
        return {"status": f"not computed: needs the headline result ({head_path}) and the {agree_with!r} rows"}
    head = json.loads(head_path.read_text(encoding="utf-8"))
    held = (head.get("generators", {}).get(generator) or {}).get("settings")
    if recipe is not None and (held is None or recipe_of(held) != recipe_of(recipe)):
        return {"status": f"not computed: {head_path.name} holds another recipe than variant {agree_with!r}",
                "headline_recipe": None if held is None else recipe_of(held), "variant_recipe": recipe_of(recipe)}
    headline = {a: v["mdice_mean"] for a, v in head["arms"].items()}
    rows = {**out["real"], **out["variants"][agree_with].get("arms", {})}
    rows.update({arm: out["variants"][v]["arms"][r] for arm, (v, r) in HEADLINE_ROWS_OF_VARIANTS.items()
                 if r in out["variants"].get(v, {}).get("arms", {})})
    screen_scores = {a: r["per_image"] for a, r in rows.items() if a in headline}
    if len(screen_scores) < 3:
        return {"status": f"not computed: {len(screen_scores)} arms shared with the headline so far"}
    res = rank_agreement(screen_scores, headline)
    res["headline_file"] = head_path.name
    res["screen_variant"] = agree_with
    res["headline_seed_std"] = {a: float(np.std(head["arms"][a]["mdice"])) for a in res["arms"]}
    res["headline_val"] = headline_val_agreement(head)
    return res


def headline_val_agreement(head: dict) -> dict:
    """The headline runs' own val scores against their test mDice: each run's best val mDice (the checkpoint it
    keeps, at the full budget) averaged over seeds, ranked against the arms' test means. How well val itself orders
    these arms, the reference a screen's rho is read against (BUSI, session 30: val put an arm 0.006 above another
    that test put 0.014 above it). The bootstrap resamples the seeds, jointly for every arm."""
    val = {a: r["best_val_mdice"] for a, r in head["arms"].items()
           if r.get("best_val_mdice") and None not in r["best_val_mdice"]}
    if len(val) < 3:
        return {"status": f"not computed: {len(val)} arms of the headline file record their val scores"}
    seeds = min(len(x) for x in val.values())
    res = rank_agreement({a: {f"seed{k}": float(x[k]) for k in range(seeds)} for a, x in val.items()},
                         {a: head["arms"][a]["mdice_mean"] for a in val},
                         unit="the headline's seeds, resampled jointly for every arm")
    res["n_seeds"] = res.pop("n_images")
    return res


#: The bar a variant's row clears before it costs a headline run (session 18: a one-seed pick, +0.022 on val with
#: its interval through 0, lost on test): the same seeds as each row it is compared with, at least GATE_SEEDS of
#: them, every seed above that row, and the paired interval over val images (volumes: val cases) above 0.
GATE_SEEDS = 2
#: A variant's rows that could become a headline arm: real + its pairs, and its pairs joined to the pasted ones.
GATE_ROWS = ("synthetic", UNION_ARM.name)


def gate_reference(out: dict, agree_with: str = HEADLINE_VARIANT, headline: dict[str, float] | None = None) -> dict:
    """The synthetic row every variant must beat: the screen row that stands for the headline's best synthetic arm
    (``headline``: arm -> test mDice; the row of the variant an arm was promoted from,
    :data:`HEADLINE_ROWS_OF_VARIANTS`, else ``agree_with``'s row of the arm's name). Session 30: on BUSI the
    headline's first synthetic arm (the inpainted pairs) is not its best (the mask2image pairs), and a variant that
    beat only the first was promoted. Without a headline file, or with none of its synthetic arms screened:
    ``agree_with``'s best gate row on val."""
    variants, headline = out.get("variants", {}), headline or {}
    screened = {arm: HEADLINE_ROWS_OF_VARIANTS.get(arm, (agree_with, arm)) for arm in headline
                if arm not in out.get("real", {})}
    screened = {arm: vr for arm, vr in screened.items() if vr[1] in variants.get(vr[0], {}).get("arms", {})}
    if screened:
        arm = max(screened, key=lambda a: headline[a])
        (v, row), test = screened[arm], headline[arm]
    else:
        held = variants.get(agree_with, {}).get("arms", {})
        rows = [r for r in GATE_ROWS if r in held]
        if not rows:
            return {}
        (v, row), arm, test = (agree_with, max(rows, key=lambda r: held[r]["val_mdice"])), None, None
    return {"variant": v, "row": row, "arm": arm, "headline_mdice": test,
            "val_mdice": variants[v]["arms"][row]["val_mdice"]}


def headline_scores(head_path: Path | None) -> dict[str, float] | None:
    """Each arm's test mDice in the headline result ``head_path`` (None where the file is absent)."""
    if head_path is None or not head_path.is_file():
        return None
    return {a: r["mdice_mean"] for a, r in json.loads(head_path.read_text(encoding="utf-8"))["arms"].items()}


def gate(out: dict, agree_with: str = HEADLINE_VARIANT, headline: dict[str, float] | None = None) -> dict:
    """For every variant row of :data:`GATE_ROWS`, the paired val difference with the rows it must beat: the row
    of the headline's best synthetic arm (:func:`gate_reference`), and the strongest real-data row (the baseline,
    copy-paste, or copy-paste onto the backgrounds where screened: the highest on val; on BUSI the baseline beats
    both cheap rows). ``promote``: some row clears the bar (:data:`GATE_SEEDS`) against every row it is compared
    with; ``why`` says what is missing otherwise."""
    strongest = max(out.get("real", {}).items(), key=lambda ar: ar[1]["val_mdice"], default=None)
    ref = gate_reference(out, agree_with, headline)
    res: dict[str, Any] = {"min_seeds": GATE_SEEDS, "reference": ref, "variants": {}}
    for v, entry in out.get("variants", {}).items():
        rows, missing = {}, []
        for name in GATE_ROWS:
            r = entry.get("arms", {}).get(name)
            if r is None:
                continue
            refs = dict([strongest] if strongest else [])
            if ref and (v, name) != (ref["variant"], ref["row"]):
                refs[f"{ref['variant']}: {ref['row']}"] = out["variants"][ref["variant"]]["arms"][ref["row"]]
            versus = {ref: _versus(r, rr) for ref, rr in refs.items()}
            rows[name] = {"versus": versus, "clears": bool(versus) and all(x["clears"] for x in versus.values())}
            missing += [f"{name} vs {ref}: {x['why']}" for ref, x in versus.items() if not x["clears"]]
        promote = any(r["clears"] for r in rows.values())
        res["variants"][v] = {"rows": rows, "promote": promote, "why": None if promote else "; ".join(missing)}
    return res


def _on_common_seeds(row: dict, other: dict) -> dict:
    """``row`` summarised over only the seeds it shares with ``other`` (its per-image means, per-seed and last-step
    scores), or ``row`` itself where they share none or it does not keep each seed's per-image scores (summaries
    made before)."""
    keep = [k for k, s in enumerate(row["seeds"]) if s in other["seeds"]]
    if not keep or "per_image_by_seed" not in row or "per_image_by_seed" not in other:
        return row
    ids, by_seed = list(row["per_image"]), [row["per_image_by_seed"][k] for k in keep]
    out = {**row, "seeds": [row["seeds"][k] for k in keep],
           "val_mdice_by_seed": [row["val_mdice_by_seed"][k] for k in keep], "per_image_by_seed": by_seed,
           "per_image": {i: float(np.mean([d[j] for d in by_seed])) for j, i in enumerate(ids)}}
    if "last_val_mdice_by_seed" in row:
        out["last_val_mdice_by_seed"] = [row["last_val_mdice_by_seed"][k] for k in keep]
    return out


def _versus(row: dict, ref: dict) -> dict:
    """The paired val difference of one row with one reference row, and whether it clears :func:`gate`'s bar."""
    # the same seeds in any order (two processes run a variant's seeds in the orders they were given); rows of other
    # seed sets (a reference screened with a third seed) are compared over the seeds they share, from each seed's
    # per-image scores, where both rows keep them
    if sorted(row["seeds"]) != sorted(ref["seeds"]):
        row, ref = _on_common_seeds(row, ref), _on_common_seeds(ref, row)
    same = sorted(row["seeds"]) == sorted(ref["seeds"])
    ids = list(row["per_image"])
    volumes = is_volumetric(ids)
    # volumes: resampled by val case, each with all its slices (a volume's slices are not independent draws)
    groups = case_groups(ids) if volumes else None
    unit = "val cases" if volumes else "val images"
    diff = bootstrap_paired(row["per_image"], ref["per_image"], groups=groups) if same else None
    by_seed = dict(zip(ref["seeds"], ref["val_mdice_by_seed"], strict=True))
    per_seed = [round(m - by_seed[s], 4) for s, m in zip(row["seeds"], row["val_mdice_by_seed"], strict=True)
                if s in by_seed]
    if diff is None:
        why = f"seeds {row['seeds']} against {ref['seeds']}: screen the same seeds"
    elif len(row["seeds"]) < GATE_SEEDS:
        why = f"{len(row['seeds'])} seed(s), {GATE_SEEDS} needed"
    elif min(per_seed) <= 0:
        why = f"not above it on every seed ({per_seed})"
    elif diff["ci95"][0] <= 0:
        why = f"interval over {unit} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}] reaches 0"
    else:
        why = None
    out = {"mean": None if diff is None else diff["mean"], "ci95": None if diff is None else diff["ci95"],
           "unit": unit, "per_seed": per_seed, "seeds": row["seeds"], "clears": why is None, "why": why}
    if "last_val_mdice_by_seed" in row and "last_val_mdice_by_seed" in ref:
        # the same difference at the last step, without the selection of the best val evaluation (shown, not gated)
        last = dict(zip(ref["seeds"], ref["last_val_mdice_by_seed"], strict=True))
        out["per_seed_last"] = [round(m - last[s], 4) for s, m in
                                zip(row["seeds"], row["last_val_mdice_by_seed"], strict=True) if s in last]
    if diff is not None and volumes:
        # volumes: the same difference at the ends and in the middle of each val structure (shown, not gated)
        out["by_position"] = {
            name: bootstrap_paired({i: row["per_image"][i] for i in members},
                                   {i: ref["per_image"][i] for i in members if i in ref["per_image"]})
            for name, members in position_subsets(ids).items() if members}
    return out


def _reference_line(ref: dict) -> str:
    """The report's sentence on the synthetic row the gate holds every variant to (:func:`gate_reference`)."""
    if not ref:
        return "Rows it must beat: the strongest real-data row (no synthetic row of the headline is screened yet)."
    row = f"`{ref['variant']}: {ref['row']}` (val {ref['val_mdice']:.3f})"
    if ref["arm"] is None:
        return (f"Rows it must beat: the strongest real-data row, and {row}, the held variant's best row on val (no "
                "headline result to name the best synthetic arm).")
    return (f"Rows it must beat: the strongest real-data row, and {row}, the row of the headline's best synthetic "
            f"arm `{ref['arm']}` (test mDice {ref['headline_mdice']:.3f}).")


def _by_position(x: dict) -> str:
    """``ends / middle`` of a gate comparison of volume rows (see :func:`_versus`), or ``—``."""
    pos = x.get("by_position")
    if not pos:
        return "—"
    return " / ".join(f"{pos[k]['mean']:+.3f} [{pos[k]['ci95'][0]:+.3f}, {pos[k]['ci95'][1]:+.3f}]"
                      if k in pos else "—" for k in ("structure-ends", "structure-middle"))


def _bands(q: dict) -> str:
    b = q.get("bands")
    if b is None:
        return "—"
    out = "/".join(str(b["used"][k]) for k in BANDS) + " (" + "/".join(str(b["drawn"][k]) for k in BANDS) + ")"
    empty = b["used"].get(EMPTY, 0), b["drawn"].get(EMPTY, 0)
    return out + (f", empty masks {empty[0]} ({empty[1]})" if any(empty) else "")


def _fidelity_bands(q: dict) -> str:
    """The real-only segmenter's Dice against each pair's own mask, by the mask's size band (small/medium/large)."""
    b, real = q["label_fidelity"].get("by_band"), q["label_fidelity"].get("real_val_by_band")
    if b is None:  # measured before the bands were
        return "—"
    out = "/".join(f"{b[k]['mdice_own_mask']:.2f}" if k in b else "—" for k in BANDS)  # lesions only, not empty
    return out if real is None else out + " (real val " + "/".join(
        f"{real[k]['mdice_own_mask']:.2f}" if k in real else "—" for k in BANDS) + ")"


def _speckle(q: dict) -> str:
    sp = q.get("speckle")
    return "—" if sp is None else f"{sp['synthetic']:.1f} ({sp['real_train']:.1f})"


def _all_seeds(out: dict) -> list[int]:
    """Every seed a row of the screen file holds (runs add seeds: the last command's are only some of them)."""
    return sorted({s for _, _, r in file_rows(out) for s in r.get("seeds", [])})


def write_report(out: dict, path: Path) -> None:
    """The Markdown summary of a screen JSON."""
    base = out["real"].get("baseline", {}).get("val_mdice")
    lines = [f"# Usefulness screen, {out['dataset']} N = {out['n_labelled']} (cpu profile, {out['resolution']} px)",
             "", "Written by `benchmarks/screen.py` from the JSON beside it. Segmenter: the headline network at "
             f"{out['segment']['steps']} steps (headline 2000), rows of seeds {_all_seeds(out)}, selected and "
             f"scored on real `val` (test never read). Machine: {out['machine']}. Last command (seeds "
             f"{out['segment']['seeds']}): `{out['command']}`.", "",
             "| row | val mDice (mean of seeds) | vs real only | at the last step, no selection, by seed | seeds "
             "| segmenter s |", "|---|---|---|---|---|---|"]

    def row(name: str, r: dict) -> str:
        gain = "—" if base is None or name == "baseline" else f"{r['val_mdice'] - base:+.3f}"
        last = " / ".join(f"{x:.3f}" for x in r.get("last_val_mdice_by_seed", [])) or "—"
        return f"| {name} | {r['val_mdice']:.3f} | {gain} | {last} | {len(r['seeds'])} | {r['seconds']:.0f} |"

    lines += [row(a, r) for a, r in out["real"].items()]
    for v, e in out["variants"].items():
        lines += [row(f"{v}: {a}", r) for a, r in e.get("arms", {}).items()]
    lines += ["", "| variant | generator train s (with pretraining) | synthesize s | samples "
              "| label fidelity own − shuffled [95 % CI] | own-mask Dice small/medium/large (real val) "
              "| in-domain KID vs train (real val: ref) | speckle (real train: ref) | lesions small/medium/large, "
              "used (drawn) |", "|---|---|---|---|---|---|---|---|---|"]
    for v, e in out["variants"].items():
        q = e.get("quality")
        if q is None:
            continue
        d = q["label_fidelity"]["own_minus_shuffled"]
        kept = "" if e.get("n_kept") is None else f" (kept {e['n_kept']})"
        lines.append(f"| {v} | {e['generator_train_s']:.0f} | {e['synthesize_s']:.0f} | {e['n_synthetic']}{kept} | "
                     f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | {_fidelity_bands(q)} | "
                     f"{q['kid_vs_train']['mean']:.4f} ({q['kid_val_vs_train']['mean']:.4f}) | {_speckle(q)} | "
                     f"{_bands(q)} |")
    g = out.get("gate")
    if g is not None:
        lines += ["", "## Which variant may cost a headline run", "",
                  f"A row clears the bar against a row it must beat with the same seeds (at least {g['min_seeds']}), "
                  "every seed above it, and the paired 95 % interval over val images (volumes: over val cases, each "
                  "with all its slices) above 0. A variant is promoted when one of its rows clears it against all "
                  "of them. The last step's Δ is the same comparison without choosing each run's best val "
                  "evaluation (shown, not gated).", "", _reference_line(g.get("reference") or {}), "",
                  "| variant | row | vs | Δ val mDice [95 % CI] | Δ per seed | Δ per seed at the last step | clears "
                  "| volumes: Δ at structure ends / middle |",
                  "|---|---|---|---|---|---|---|---|"]
        for v, e in g["variants"].items():
            for name, r in e["rows"].items():
                for ref, x in r["versus"].items():
                    d = "—" if x["mean"] is None else f"{x['mean']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]"
                    seeds = ", ".join(f"{p:+.3f}" for p in x["per_seed"]) or "—"
                    last = ", ".join(f"{p:+.3f}" for p in x.get("per_seed_last", [])) or "—"
                    lines.append(f"| {v} | {name} | {ref} | {d} | {seeds} | {last} | "
                                 f"{'yes' if x['clears'] else 'no: ' + x['why']} | {_by_position(x)} |")
        promoted = [v for v, e in g["variants"].items() if e["promote"]]
        lines += ["", f"Promoted: {', '.join(promoted) if promoted else 'none'}."]
    a = out.get("agreement", {})
    lines += ["", "## Rank agreement with the headline", ""]
    if "spearman" in a:
        b = a["bootstrap"]
        lines.append(f"Headline file `{a['headline_file']}`; its synthetic arms are screened as variant "
                     f"`{a.get('screen_variant', 'today')}`. "
                     f"Spearman rho {a['spearman']:+.2f} over {len(a['arms'])} arms ({', '.join(a['arms'])}); "
                     f"bootstrap over {a['n_images']} val images 95 % CI [{b['ci95'][0]:+.2f}, {b['ci95'][1]:+.2f}]; "
                     f"exact permutation p = {a['permutation_p']:.3f} ({a['permutations']} orderings).")
        h = a.get("headline_val", {})
        if "spearman" in h:
            lines.append("")
            lines.append(f"For reference, the headline runs' own val scores (each run's best val mDice, full budget, "
                         f"mean of {h['n_seeds']} seeds) against their test mDice: Spearman rho {h['spearman']:+.2f} "
                         f"over {len(h['arms'])} arms; bootstrap over seeds 95 % CI [{h['bootstrap']['ci95'][0]:+.2f}, "
                         f"{h['bootstrap']['ci95'][1]:+.2f}]; exact permutation p = {h['permutation_p']:.3f}.")
    else:
        lines.append(a.get("status", "not computed"))
    write_text_atomic(path, "\n".join(lines) + "\n")


app = typer.Typer(add_completion=False, help=__doc__)


@app.callback()
def _group() -> None:
    """Usefulness screen of generator variants (see the module docstring)."""


@app.command("prepare")
def prepare_cmd(
    dataset: str = typer.Option("kvasir-seg", help=DATASETS),
    n: int = typer.Option(32, help="Labelled pairs."),
    variant: list[str] = typer.Option(["today"], help="Variants to train, in order."),
    threads: int | None = typer.Option(None, help="torch threads."),
) -> None:
    """Train the variants' generators and draw their synthetic sets (resumable)."""
    if threads:
        torch.set_num_threads(threads)
    for v, s, seconds in prepare_variants(headline_config(dataset), n, variant):
        typer.echo(f"{v}: {s.manifest} ({seconds:.0f} s)")


def prepare_variants(config: Path, n: int, variants: list[str]) -> Iterator[tuple[str, SyntheticSet, float]]:
    """Train (or reuse) each variant's generator and draw its set in the headline sweep's folder, claimed first
    as :func:`screen` claims it (an unclaimed folder with a cache in it is refused by every later run)."""
    claim_sweep(config)
    data = None
    for v in variants:
        cfg = screen_config(config, n, v)
        data = data or LesionforgeStages().load_data(cfg)
        t0 = time.perf_counter()
        s = prepare(cfg, data, n)
        yield v, s, time.perf_counter() - t0


@app.command("run")
def run_cmd(
    dataset: str = typer.Option("kvasir-seg", help=DATASETS),
    n: int = typer.Option(32, help="Labelled pairs."),
    variant: list[str] = typer.Option(["today"], help="Variants to screen, in order (trained if not cached)."),
    real_only: bool = typer.Option(False, help="Only the real-data rows (while the generators still train)."),
    steps: int = typer.Option(STEPS, help="Segmenter steps (another budget writes its own -s<steps> file)."),
    val_interval: int = typer.Option(VAL_INTERVAL, help="Segmenter validation interval."),
    seed: list[int] = typer.Option(list(SEEDS), help="Segmenter seeds."),
    agree_with: str | None = typer.Option(
        None, help="The variant the headline config holds (its rows stand for the headline's synthetic arms in the "
        "rank agreement; default: held_variant)."),
    union: bool = typer.Option(False, help="Every variant also trains the row of its pairs joined to copy-paste "
                               "onto the backgrounds (the headline's best arm), not only --agree-with."),
    gate_rows_only: bool = typer.Option(False, help="Only the rows the gate judges (real + pairs, and the joined "
                                        "row): no pairs-alone row, no rank-agreement row (about half the time)."),
    joined_only: bool = typer.Option(False, help="Of each variant only the joined row (implies --union): a lever "
                                     "of copy-paste or of the joined row's mixing, judged against the held "
                                     "recipe's joined row."),
    results: Path = typer.Option(ROOT / "benchmarks" / "results", help="Where the JSON and Markdown go."),
    threads: int | None = typer.Option(None, help="torch threads."),
) -> None:
    """Screen the variants: real rows once, then each variant's rows, quality and the rank agreement."""
    if threads:
        torch.set_num_threads(threads)
    config = headline_config(dataset)
    out = screen(config, n, [] if real_only else variant, results,
                 headline=ROOT / "benchmarks" / "results" / f"{dataset}-n{n}-cpu.json",
                 command="python benchmarks/screen.py " + " ".join(sys.argv[1:]), steps=steps,
                 val_interval=val_interval, seeds=tuple(seed),
                 agree_with=agree_with or held_variant(config), union=union,
                 gate_rows_only=gate_rows_only, joined_only=joined_only)
    typer.echo(json.dumps(out.get("agreement", {}), indent=1)[:2000])


@app.command("agree")
def agree_cmd(
    dataset: str = typer.Option("kvasir-seg", help=DATASETS),
    n: int = typer.Option(32, help="Labelled pairs."),
    steps: int = typer.Option(STEPS, help="Segmenter steps of the screen file (its -s<steps> suffix)."),
    agree_with: str | None = typer.Option(
        None, help="The variant the headline config holds (default: held_variant)."),
    results: Path = typer.Option(ROOT / "benchmarks" / "results", help="Where the screen JSON and Markdown are."),
    headline: Path = typer.Option(
        None, help="The headline result (default: benchmarks/results/<dataset>-n<N>-cpu.json)."),
) -> None:
    """Recompute the rank agreement of a finished screen file with the headline result as it is now (e.g. after
    the headline sweep gained arms), and the gate, from the two files alone: no segmenter is trained. Rows whose
    segmenters' run records are on this machine also get their last step's val score (:func:`fill_from_run_records`)."""
    out_path = screen_file(results, dataset, n, steps, existing=True)
    out = json.loads(out_path.read_text(encoding="utf-8"))
    config = headline_config(dataset)
    agree_with = agree_with or held_variant(config)
    held = screen_config(config, n, agree_with, steps=steps)
    recipe = held.generators[variant_generator(held)]
    headline = headline or ROOT / "benchmarks" / "results" / f"{dataset}-n{n}-cpu.json"
    fill_from_run_records(out, screen_dir(held, n))
    out["agreement"] = agreement(out, headline, agree_with, recipe.model_dump(mode="json"), variant_generator(held))
    out["gate"] = gate(out, agree_with, headline_scores(headline))
    write_json_atomic(out_path, out)
    write_report(out, out_path.with_suffix(".md"))
    typer.echo(json.dumps(out["agreement"], indent=1)[:2000])


def screen_row(out: dict, name: str) -> dict:
    """A row of a screen file by name: a real row (``baseline``) or ``<variant>:<row>`` (the row ``synthetic`` when
    only the variant is named)."""
    if name in out.get("real", {}):
        return out["real"][name]
    variant, _, row = name.partition(":")
    rows = out.get("variants", {}).get(variant, {}).get("arms", {})
    if (row or "synthetic") not in rows:
        known = [*out.get("real", {}),
                 *(f"{v}:{r}" for v, e in out.get("variants", {}).items() for r in e.get("arms", {}))]
        raise typer.BadParameter(f"no screen row {name!r}; the file has {known}")
    return rows[row or "synthetic"]


@app.command("compare")
def compare_cmd(
    row: str = typer.Argument(..., help="A row: a real one (baseline) or <variant>[:<row>] (default row synthetic)."),
    reference: list[str] = typer.Argument(..., help="The rows it is compared with."),
    dataset: str = typer.Option("kvasir-seg", help=DATASETS),
    n: int = typer.Option(32, help="Labelled pairs."),
    steps: int = typer.Option(STEPS, help="Segmenter steps of the screen file (its -s<steps> suffix)."),
    results: Path = typer.Option(ROOT / "benchmarks" / "results", help="Where the screen JSON is."),
) -> None:
    """One row against others on val, from the screen file alone, as the gate compares (over the seeds they share:
    the per-seed differences and the paired 95 % interval over val images or cases); nothing is written."""
    out = json.loads(screen_file(results, dataset, n, steps, existing=True).read_text(encoding="utf-8"))
    a = screen_row(out, row)
    for ref in reference:
        x = _versus(a, screen_row(out, ref))
        ci = "—" if x["ci95"] is None else f"{x['mean']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]"
        typer.echo(f"{row} vs {ref}: {ci} over {x['unit']}, per seed {x['per_seed']} (seeds {x['seeds']})"
                   + ("" if x["clears"] else f"; the gate: {x['why']}"))


if __name__ == "__main__":
    app()
