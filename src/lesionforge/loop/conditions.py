"""A diagnosis turned into what the generator is asked for: masks, prompts, backgrounds.

- **Shares** (:func:`steered_shares`): every group (size band, shape class, grid cell, appearance cluster) is
  drawn at its natural share (its share of the val lesions) times its failure rate relative to the overall one,
  clipped to [1 / ``max_gain``, ``max_gain``]: failures shift the draw, by a bounded factor, and no group is ever
  dropped. (The first version drew bands in proportion to their failure rates alone, with a floor of 15 %: on
  Kvasir-SEG it moved half the draws to small polyps, 3 % of the real ones, on the evidence of 2 val lesions,
  and fell to the baseline's mDice; docs/loop.md.)
- **Masks** (:class:`TargetedMaskSource`): the size band drawn with its steered share; the area
  within the band and the outline come from the real lesions (:class:`~lesionforge.conditioning.masks.SizeSampler`
  and a real shape from the shape bank, rescaled by :func:`~lesionforge.conditioning.masks.size_controlled_mask`),
  the shape picked with its shape class's steered share; for ``mask2image`` the lesion is then moved so
  its centroid lies in a grid cell drawn the same way (``inpaint`` places it inside the background's field of
  view, so position is not steered there).
- **Prompts** (text-conditioned generators only): the built-in prompt plus the words of an appearance cluster
  (``"dark reddish"``) drawn with the clusters' steered shares.
- **Backgrounds** (``inpaint``): the lesion-free frames repeated in proportion to ``1 + 3 x`` their normalised
  uncertainty, so the most uncertain frame is drawn four times as often as the least, and none is dropped.
- **Keep weights** (``steer_by: keep``, :func:`keep_weights`): nothing above; the round draws as open loop does
  and each made pair gets a weight from the same shares, by which the filter apportions what it keeps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from lesionforge.conditioning.masks import (
    SizeSampler,
    area_fractions,
    jitter_mask,
    shape_bank_from_masks,
    size_controlled_mask,
)
from lesionforge.data.arrays import PairArrays
from lesionforge.data.bands import BANDS, band_of
from lesionforge.loop.diagnose import SHAPES, cell_of, shape_class
from lesionforge.loop.settings import LoopSettings

BACKGROUND_GAIN = 3.0  # the most uncertain background is drawn (1 + gain) times as often as the least
BACKGROUND_COPIES = 4  # repeated background list length / number of backgrounds (resolution of the weights)


def steered_shares(groups: dict[str, dict], max_gain: float) -> dict[str, float]:
    """Shares of ``groups`` (a diagnosis's ``by_band`` etc.): natural share (val lesions + 0.5, so a group
    unseen in val keeps a little) times ``weight_rate`` / overall rate clipped to [1 / max_gain, max_gain],
    normalised. Without lesions or failures: the natural shares."""
    names = list(groups)
    n = np.array([groups[k]["lesions"] for k in names], dtype=float)
    natural = (n + 0.5) / (n + 0.5).sum()
    failed = sum(groups[k]["failed"] for k in names)
    overall = failed / n.sum() if n.sum() > 0 else 0.0
    if overall <= 0:
        return {k: float(v) for k, v in zip(names, natural, strict=True)}
    gain = np.clip(np.array([groups[k]["weight_rate"] for k in names]) / overall, 1.0 / max_gain, max_gain)
    w = natural * gain
    return {k: float(v) for k, v in zip(names, w / w.sum(), strict=True)}


def plan_conditions(diagnosis: dict[str, Any], real_masks: np.ndarray, settings: LoopSettings) -> dict[str, Any]:
    """The draw plan of one round (JSON-ready): band, shape, cell and appearance shares, the natural shares
    they were steered from, the real band shares for comparison, and the groups targeted (drawn more than
    their natural share). Steered with ``settings.max_gain``; a part ``settings`` does not steer
    (``LoopSettings.steer``) is planned at its natural shares."""
    real = area_fractions(real_masks)
    real_bands = {b: float(np.mean([band_of(a) == b for a in real])) if len(real) else None for b in BANDS}
    max_gain = settings.max_gain
    plan: dict[str, Any] = {"max_gain": max_gain, "grid": diagnosis["grid"], "real_band_shares": real_bands}
    app = diagnosis["by_appearance"]
    for key, groups in (("band", diagnosis["by_band"]), ("shape", diagnosis["by_shape"]),
                        ("cell", diagnosis["by_cell"]), ("appearance", app)):
        gain = max_gain if settings.steers("position" if key == "cell" else key) else 1.0
        shares = steered_shares(groups, gain) if groups else {}
        natural = steered_shares(groups, 1.0) if groups else {}
        plan[f"{key}_shares"], plan[f"{key}_natural_shares"] = shares, natural
        plan[f"targeted_{key}s" if key != "appearance" else "targeted_appearance"] = [
            k for k in shares if shares[k] > natural[k] + 1e-9]
    plan["appearance_labels"] = {k: g["label"] for k, g in app.items()}
    plan["appearance_colours"] = {k: g["mean_colour"] for k, g in app.items()}
    plan["steer_by"] = settings.steer_by or "draw"
    return plan


def keep_weights(plan: dict[str, Any], images: np.ndarray, masks: np.ndarray, *, position: bool,
                 max_gain: float) -> tuple[np.ndarray, dict[str, list]]:
    """Each made pair's weight for a round that steers what it keeps (``steer_by: keep``): the product over its
    groups (size band and shape class of its mask; the grid cell of its centroid when ``position``; the
    appearance cluster nearest to the made lesion's mean colour) of steered share / natural share, clipped to
    [1 / max_gain, max_gain]. A part the plan does not steer has equal shares and so factor 1. ``images`` uint8
    (N, H, W, C), ``masks`` (N, H, W). Returns the weights and each pair's groups (for the round's record)."""
    colours = plan.get("appearance_colours") or {}
    names = list(colours)
    centres = np.array([colours[k] for k in names], dtype=np.float64) if names else None
    weights, groups = np.ones(len(masks)), {"band": [], "shape": [], "cell": [], "appearance": []}
    for i, m in enumerate(masks > 0):
        if not m.any():  # a lesion-free pair is not steered
            for v in groups.values():
                v.append(None)
            continue
        cy, cx = ndimage.center_of_mass(m)
        found = {"band": band_of(float(m.mean())), "shape": shape_class(m)[0],
                 "cell": cell_of(cy, cx, m.shape[0], plan["grid"]) if position else None, "appearance": None}
        if centres is not None:
            colour = images[i][m].reshape(-1, images.shape[-1] if images.ndim == 4 else 1).mean(0)
            found["appearance"] = names[int(np.argmin(((centres - colour) ** 2).sum(1)))]
        w = 1.0
        for key, g in found.items():
            groups[key].append(g)
            shares, natural = plan.get(f"{key}_shares") or {}, plan.get(f"{key}_natural_shares") or {}
            if g is not None and natural.get(g):
                w *= shares[g] / natural[g]
        weights[i] = float(np.clip(w, 1.0 / max_gain, max_gain))
    return weights, groups


class TargetedMaskSource:
    """A :class:`~lesionforge.conditioning.masks.MaskSource` drawing masks by a round's plan (module doc).

    ``source="jitter"``: the band is drawn first, then a real mask of that band (picked by its shape class's
    share) deformed by :func:`~lesionforge.conditioning.masks.jitter_mask`, as the open-loop ``jitter`` source
    does; a band without real masks falls back to a size-controlled lesion. ``source="size"``: every lesion is
    size-controlled (a real outline rescaled into the drawn band)."""

    def __init__(self, plan: dict[str, Any], real_masks: np.ndarray, size: int, *, move_to_cell: bool,
                 tag: dict[str, Any] | None = None, source: str = "jitter", ids: list[str] | None = None):
        self.plan, self.size, self.move_to_cell, self.source = plan, size, move_to_cell, source
        self.tag = tag or {}
        has = (real_masks > 0).any()
        self.sampler = SizeSampler(area_fractions(real_masks) if has else None,
                                   band_shares=[plan["band_shares"][b] for b in BANDS])
        self.bank = shape_bank_from_masks(real_masks) if has else []
        self.shape_classes = [shape_class(s > 0)[0] for s in self.bank]
        self.shape_p = self._shape_p(self.shape_classes)
        self.cells = list(plan["cell_shares"])
        self.cell_p = np.array([plan["cell_shares"][c] for c in self.cells])
        self.band_p = np.array([plan["band_shares"][b] for b in BANDS])
        # jitter: the real masks by band, each band's pick weighted by shape class
        keep = [i for i, m in enumerate(real_masks) if (m > 0).any()]
        self.real = [real_masks[i] for i in keep]
        self.real_ids = [None if ids is None else ids[i] for i in keep]
        self.real_classes = [shape_class(m > 0)[0] for m in self.real]
        band = [band_of(float((m > 0).mean())) for m in self.real]
        self.by_band = [[k for k in range(len(self.real)) if band[k] == b] for b in BANDS]
        self.band_pick_p = [self._shape_p([self.real_classes[k] for k in ks]) for ks in self.by_band]
        self.band_sizers = [SizeSampler(area_fractions(real_masks) if has else None,
                                        band_shares=[float(b == j) for j in range(len(BANDS))])
                            for b in range(len(BANDS))]

    def _shape_p(self, classes: list[str]) -> np.ndarray | None:
        """Each shape class present gets its planned share (renormalised over the classes present), split
        evenly over its members."""
        if not classes:
            return None
        present = sorted(set(classes), key=SHAPES.index)
        share = np.array([self.plan["shape_shares"][c] for c in present])
        per_class = {c: s / share.sum() / classes.count(c) for c, s in zip(present, share, strict=True)}
        return np.array([per_class[c] for c in classes])

    def _sized(self, rng: np.random.Generator, target: float) -> tuple[np.ndarray, dict]:
        bank, shape = None, None
        if self.bank:
            k = int(rng.choice(len(self.bank), p=self.shape_p))
            bank, shape = [self.bank[k]], self.shape_classes[k]
        mask = size_controlled_mask(rng, self.size, float(target), bank)
        return mask, {"mask_source": "closed-loop", "source_id": None, "target_area_frac": float(target),
                      "shape_class": shape}

    def _draw(self, rng: np.random.Generator, target: float | None) -> tuple[np.ndarray, dict]:
        if target is not None:
            return self._sized(rng, target)
        b = int(rng.choice(len(BANDS), p=self.band_p))
        members = self.by_band[b]
        if not members:
            mask, info = self._sized(rng, float(self.band_sizers[b].sample(rng, 1)[0]))
        else:
            k = members[int(rng.choice(len(members), p=self.band_pick_p[b]))]
            mask = jitter_mask(self.real[k], rng)
            info = {"mask_source": "closed-loop-jitter", "source_id": self.real_ids[k],
                    "shape_class": self.real_classes[k]}
        return mask, {**info, "band_drawn": BANDS[b]}

    def __call__(self, rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, dict]]:
        targets = list(self.sampler.sample(rng, n)) if self.source == "size" else [None] * n
        out = []
        for target in targets:
            mask, info = self._draw(rng, target)
            info = {**info, "area_frac": float(mask.mean()), **self.tag}
            if self.move_to_cell and mask.any():
                cell = self.cells[int(rng.choice(len(self.cells), p=self.cell_p))]
                mask = move_into_cell(mask, cell, self.plan["grid"], rng)
                info["cell"] = cell
            out.append((mask, info))
        return out


def move_into_cell(mask: np.ndarray, cell: str, grid: int, rng: np.random.Generator) -> np.ndarray:
    """Shift ``mask`` (H, W) so its centroid falls at a random point of cell ``r<row>c<col>`` of a ``grid`` x
    ``grid`` grid, as near as the lesion allows while staying wholly inside the image."""
    h, w = mask.shape
    row, col = int(cell[1:cell.index("c")]), int(cell[cell.index("c") + 1:])
    ty, tx = (row + rng.random()) * h / grid, (col + rng.random()) * w / grid
    ys, xs = np.nonzero(mask)
    cy, cx = ndimage.center_of_mass(mask > 0)
    dy = int(np.clip(round(ty - cy), -ys.min(), h - 1 - ys.max()))
    dx = int(np.clip(round(tx - cx), -xs.min(), w - 1 - xs.max()))
    out = np.zeros_like(mask)
    out[ys + dy, xs + dx] = mask[ys, xs]
    return out


def appearance_prompts(plan: dict[str, Any], base) -> Any:
    """A prompt function (``(sample_id, class, area, rng) -> str``): ``base``'s prompt plus the words of an
    appearance cluster drawn with the plan's shares."""
    names = list(plan["appearance_shares"])
    p = np.array([plan["appearance_shares"][k] for k in names])

    def prompt_for(sample_id: str, label_class: str | None, area: float, rng: np.random.Generator) -> str:
        text = base(sample_id, label_class, area, rng)
        if not names:
            return text
        return f"{text}, {plan['appearance_labels'][names[int(rng.choice(len(names), p=p))]]}"

    return prompt_for


def weighted_backgrounds(backgrounds: PairArrays, uncertainty: dict[str, Any]) -> tuple[PairArrays, dict]:
    """``backgrounds`` repeated by uncertainty (module doc; deterministic largest-remainder counts) and the
    per-id draw shares."""
    ids = list(backgrounds.ids)
    score = {i: e + (d or 0.0) for i, e, d in zip(uncertainty["ids"], uncertainty["entropy"],
                                                   uncertainty["disagreement"] or [None] * len(uncertainty["ids"]),
                                                   strict=True)}
    s = np.array([score.get(i, 0.0) for i in ids])
    span = s.max() - s.min() if len(s) else 0.0
    w = 1.0 + BACKGROUND_GAIN * ((s - s.min()) / span if span > 0 else np.zeros_like(s))
    total = BACKGROUND_COPIES * len(ids)
    exact = w / w.sum() * total
    counts = np.maximum(1, np.floor(exact).astype(int))
    for k in np.argsort(-(exact - np.floor(exact)), kind="stable")[: max(0, total - counts.sum())]:
        counts[k] += 1
    index = np.repeat(np.arange(len(ids)), counts)
    return backgrounds.subset(index), {i: float(c / counts.sum()) for i, c in zip(ids, counts, strict=True)}
