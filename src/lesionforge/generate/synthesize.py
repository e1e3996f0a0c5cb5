"""``lesionforge synthesize``: draw N new labelled pairs from a trained generator and write them as files.

The drawing itself is the generator's :class:`~lesionforge.generate.pipeline.LesionPipeline`; this module plans
each sample's conditions, calls it batch by batch, and writes images, masks and the manifest.

Per sample ``i`` (run seed ``s``) every choice (mask, background, real image, prompt) comes from
``numpy.random.default_rng([s, i])`` and all diffusion noise from ``sample_seed(s, i)``: the same seed gives
the same bytes, whatever the batch size, and a killed run resumes where it stopped (each finished batch's
manifest rows are appended in one write, after its files are written; ids already in the manifest are
skipped, and a torn last row left by a kill is dropped and its samples drawn again).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lesionforge.data.arrays import PairArrays
from lesionforge.data.io import write_image, write_mask
from lesionforge.data.manifest import Provenance, Sample, append_manifest, drop_torn_tail, read_manifest
from lesionforge.errors import ConfigError, OverwriteError
from lesionforge.generate.config import SamplingConfig
from lesionforge.generate.pipeline import LesionPipeline
from lesionforge.generate.sampler import sample_seed
from lesionforge.generate.textcond import TextConditioner
from lesionforge.outputs import announce_resume, claim_output, dir_hash
from lesionforge.progress import StageProgress
from lesionforge.utils import code_version, write_json_atomic

MANIFEST = "manifest.jsonl"
RUN_FILE = "synthesis.json"
MAX_PLACEMENT_TRIES = 50


@dataclass
class Plan:
    """What sample ``index`` is made from: its label ``mask`` uint8 (H, W) (None for ``joint``), the
    ``image`` uint8 (H, W, C) the spatial condition is built from (real image / background), and provenance."""

    index: int
    id: str
    mask: np.ndarray | None
    image: np.ndarray | None
    prompt: str | None
    label_class: str | None
    info: dict = field(default_factory=dict)


def synthesize(
    generator_dir: str | Path,
    out_dir: str | Path,
    n: int,
    *,
    masks_from=None,
    backgrounds: PairArrays | None = None,
    real: PairArrays | None = None,
    seed: int = 0,
    sampling: SamplingConfig | None = None,
    batch_size: int = 16,
    prompts=None,
    resume: bool = True,
    overwrite: bool = False,
    codec=None,
    text_encoder=None,
    progress: bool = True,
    indices: Sequence[int] | None = None,
    repaint_share: float = 0.0,
    paste_strength: float = 0.0,
) -> list[Sample]:
    """Write ``n`` synthetic pairs to ``out_dir/images``, ``out_dir/masks`` and ``out_dir/manifest.jsonl``,
    drawn batch by batch with the generator's :class:`~lesionforge.generate.pipeline.LesionPipeline`.

    Conditions by kind: ``mask2image`` and ``inpaint`` take masks from ``masks_from`` (a mask source:
    ``(rng, n) -> [(mask uint8 (H, W), info)]``); ``inpaint`` paints into lesion-free ``backgrounds``
    (mask placed inside the field of view; pixels outside the mask are the background's, bit for bit);
    ``edge-text`` cycles over ``real`` pairs (their masks are the labels); ``joint`` needs nothing.
    ``repaint_share`` (``inpaint``): that share of the samples (every k-th index, no random draw) is painted onto
    the labelled ``real`` image its jittered mask comes from, inside the jittered mask joined with the image's own
    lesion, so the real lesion is repainted and the label is the joined mask; the rest onto ``backgrounds``.
    ``paste_strength`` (``inpaint``, in (0, 1]): each sample starts from a lesion of a labelled ``real`` pair pasted
    onto a background exactly as copy-paste onto backgrounds pastes it (:func:`~lesionforge.segment.pasted_set.
    pasted_pair`: the donors cycle over the labelled pairs), and the generator re-draws the lesion and its border
    from that image noised to this share of the schedule (SDEdit; 1: from pure noise, only the pasted outline
    kept); the label is the pasted mask. 0: masks from ``masks_from``, painted from noise.
    ``sampling``: sampler, steps, guidance, RePaint jumps, eta; a field left None (or no ``sampling``) takes
    the generator's own setting. Returns every sample of the manifest (the real ``real`` pairs also give the
    class of a jittered mask's source sample). ``indices``: draw only these sample indices of the ``n`` (one
    shard of a sharded synthesis, see :mod:`~lesionforge.generate.shards`); each sample is the same as in the
    whole run.
    """
    gen_dir = Path(generator_dir)
    pipe = LesionPipeline.from_pretrained(gen_dir, vae=codec, text_encoder=text_encoder)
    gcfg = pipe.unet.cfg
    kind, sampling = gcfg.kind, (sampling or SamplingConfig()).resolved(gcfg)
    _check_inputs(kind, masks_from, backgrounds, real, repaint_share, paste_strength)
    out_dir = claim_output(out_dir, "synthetic set", overwrite=overwrite, resume=resume)
    common = {"generator": kind, "checkpoint": str(gen_dir.resolve()), "checkpoint_hash": _weights_hash(gen_dir),
              "sampler": sampling.sampler, "steps": sampling.steps, "guidance_scale": sampling.guidance_scale}
    if sampling.eta:  # recorded only when used, so that deterministic runs keep the files they always had
        common["eta"] = sampling.eta
    if repaint_share:  # recorded only when used: sets drawn before it keep their run files
        common["repaint_share"] = repaint_share
    if paste_strength:  # recorded only when used, as repaint_share
        common["paste_strength"] = paste_strength
    if sampling.mask_guidance:  # recorded only when used, as eta
        common["mask_guidance"] = True
    if sampling.guidance_region is not None:
        common["guidance_region"] = sampling.guidance_region
    _check_same_run(out_dir, {**common, "seed": seed, "repaint_jumps": sampling.repaint_jumps})
    common["code_version"] = code_version()
    if kind == "inpaint":
        common.update(repaint_jumps=sampling.repaint_jumps, inpaint_dilate=gcfg.inpaint_dilate)
    text = TextConditioner(gcfg, prompts, pipe.text_encoder)  # chooses each sample's prompt
    done: set[str] = set()
    if (out_dir / MANIFEST).is_file():
        drop_torn_tail(out_dir / MANIFEST)
        done = {s.id for s in read_manifest(out_dir / MANIFEST, resolve=False)}
    wanted = range(n) if indices is None else [i for i in indices if 0 <= i < n]
    todo = [i for i in wanted if _sample_id(kind, seed, i) not in done]
    if done and todo:
        announce_resume(out_dir, f"sample {todo[0]} ({len(wanted) - len(todo)} of {len(wanted)} already in {MANIFEST})")
    with StageProgress(disable=not progress) as bar:
        task = bar.add_task(f"synthesizing ({kind})", total=len(wanted), completed=len(wanted) - len(todo))
        for start in range(0, len(todo), batch_size):
            plans = [_plan(kind, seed, i, masks_from, backgrounds, real, text, repaint_share, paste_strength)
                     for i in todo[start:start + batch_size]]
            rows = _draw(pipe, plans, sampling, seed, out_dir, common, paste_strength or 1.0)
            append_manifest(out_dir / MANIFEST, rows)
            bar.update(task, advance=len(plans))
    return read_manifest(out_dir / MANIFEST, resolve=False)


def _sample_id(kind: str, seed: int, index: int) -> str:
    return f"syn-{kind}-s{seed}-{index:06d}"


def _weights_hash(gen_dir: Path) -> str:
    """Hash of the weights and settings only (not of checkpoints or sample grids kept beside them)."""
    parts = [dir_hash(gen_dir / d) for d in ("unet", "controlnet") if (gen_dir / d).is_dir()]
    return parts[0] if len(parts) == 1 else "-".join(parts)


def _check_same_run(out_dir: Path, settings: dict) -> None:
    """A resumed run must continue the same run: refuse other weights, sampler or seed in the same folder."""
    path = out_dir / RUN_FILE
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise OverwriteError(f"{out_dir} holds a synthesis run with other {', '.join(changed)}; "
                                 "use another --out or --overwrite")
    else:
        write_json_atomic(path, settings)


def _check_inputs(kind: str, masks_from, backgrounds: PairArrays | None, real: PairArrays | None,
                  repaint_share: float = 0.0, paste_strength: float = 0.0) -> None:
    if not 0.0 <= paste_strength <= 1.0:
        raise ConfigError(f"paste_strength must lie in (0, 1] (0: off), got {paste_strength}")
    if paste_strength and kind != "inpaint":
        raise ConfigError(f"paste_strength re-draws real lesions pasted onto backgrounds: kind 'inpaint', not {kind!r}")
    if paste_strength and repaint_share:
        raise ConfigError("paste_strength and repaint_share each choose what a sample is painted onto: give one")
    if paste_strength and (real is None or not real.has_mask.any()):
        raise ConfigError("paste_strength needs the labelled pairs (real) whose lesions are pasted")
    if kind in ("mask2image", "inpaint") and masks_from is None and not paste_strength:
        raise ConfigError(f"kind {kind!r} needs masks_from (a mask source)")
    if not 0.0 <= repaint_share <= 1.0:
        raise ConfigError(f"repaint_share must lie in [0, 1], got {repaint_share}")
    if repaint_share and kind != "inpaint":
        raise ConfigError(f"repaint_share is for kind 'inpaint', not {kind!r}")
    if repaint_share and (real is None or not real.has_mask.any()):
        raise ConfigError("repaint_share needs the labelled pairs (real) whose lesions are repainted")
    if kind == "inpaint" and repaint_share < 1.0 and (backgrounds is None or len(backgrounds) == 0):
        raise ConfigError("kind 'inpaint' needs lesion-free backgrounds")
    if kind == "edge-text" and (real is None or not real.has_mask.any()):
        raise ConfigError("kind 'edge-text' needs real labelled pairs (their masks are the labels)")


def _repaints(i: int, share: float) -> bool:
    """Whether sample ``i`` repaints its source image: exactly ``share`` of every run of indices, spread evenly,
    without a random draw (so the other samples' draws are those of a set without repainting)."""
    return share > 0 and int((i + 1) * share) > int(i * share)


def _plan(kind: str, seed: int, i: int, masks_from, backgrounds: PairArrays | None, real: PairArrays | None,
          text: TextConditioner, repaint_share: float = 0.0, paste_strength: float = 0.0) -> Plan:
    rng = np.random.default_rng([seed, i])
    info: dict = {}
    image = mask = None
    label_class = None
    if kind == "edge-text":
        pool = np.flatnonzero(real.has_mask)
        j = int(pool[i % len(pool)])  # cycle over real images: many samples per real image
        image, mask, label_class = real.images[j], real.masks[j], real.classes[j]
        info = {"mask_source": "real", "source_id": real.ids[j]}
    elif kind == "mask2image":
        mask, minfo = _drawn(masks_from, rng, seed, i)
        label_class, info = _class_of(minfo, real), _mask_info(minfo)
    elif kind == "inpaint" and paste_strength:
        from lesionforge.segment.config import CopyPasteConfig
        from lesionforge.segment.pasted_set import pasted_pair

        # one home for pasting: the copy-paste-onto-backgrounds pair of the same index and seed, re-drawn later
        image, mask, pinfo = pasted_pair(i, seed, real, backgrounds, CopyPasteConfig())
        label_class = _class_of(pinfo, real)
        info = {"mask_source": "pasted", "source_id": pinfo["source_id"], "background_id": pinfo["background_id"],
                "mask_info": {"area_frac": float(mask.mean()), "paste_strength": paste_strength}}
    elif kind == "inpaint" and _repaints(i, repaint_share):
        image, mask, minfo = _repainted(_drawn(masks_from, rng, seed, i), real)
        label_class, info = _class_of(minfo, real), {**_mask_info(minfo), "background_id": minfo["source_id"]}
    elif kind == "inpaint":
        j, mask, minfo = _placed_mask(masks_from, backgrounds, rng, seed, i)
        image = backgrounds.images[j]
        label_class, info = _class_of(minfo, real), {**_mask_info(minfo), "background_id": backgrounds.ids[j]}
    area = np.zeros((1, 1, 1)) if mask is None else mask[None]
    sid = _sample_id(kind, seed, i)
    prompt = text.prompts([sid], [label_class], area, rng)[0]
    return Plan(i, sid, None if mask is None else (mask > 0).astype(np.uint8), image, prompt, label_class, info)


def _repainted(drawn: tuple[np.ndarray, dict], real: PairArrays) -> tuple[np.ndarray, np.ndarray, dict]:
    """(background, mask, info) of a sample that repaints the labelled image its jittered mask was drawn from:
    the mask joined with that image's own lesion, so that no part of the real lesion is left outside the label."""
    mask, info = drawn
    src = info.get("source_id")
    if src not in real.ids:
        raise ConfigError(f"repaint_share: a drawn mask comes from {src!r}, not a labelled pair; repainting needs "
                          "masks jittered from the labelled pairs (mask_source 'jitter')")
    j = real.ids.index(src)
    joined = ((mask > 0) | (real.masks[j] > 0)).astype(np.uint8)
    return real.images[j], joined, {**info, "repainted": True, "jitter_area_frac": info.get("area_frac"),
                                    "area_frac": float(joined.mean())}


def field_of_view_of(image: np.ndarray) -> np.ndarray:
    """Where a lesion may go on ``image`` uint8 (H, W, C): bool (H, W) (no black border, no overlays)."""
    from lesionforge.conditioning.masks import field_of_view

    return field_of_view(image)


def _drawn(masks_from, rng: np.random.Generator, seed: int, i: int) -> tuple[np.ndarray, dict]:
    """Sample ``i``'s mask: by its index where the source draws its masks evenly
    (:meth:`~lesionforge.conditioning.masks.RealJitterSource.draw_at`), else at random from ``rng``."""
    if getattr(masks_from, "even", False):
        return masks_from.draw_at(rng, seed, i)
    return masks_from(rng, 1)[0]


def _placed_mask(masks_from, backgrounds: PairArrays, rng: np.random.Generator, seed: int,
                 i: int) -> tuple[int, np.ndarray, dict]:
    """A background (its index) and sample ``i``'s mask placed inside its field of view. A random source draws
    other masks until one fits the background; an even source keeps sample ``i``'s mask (its index decides it), so
    it re-jitters it and tries other backgrounds too: a large lesion may fit nowhere on a frame with a small field
    of view. (A random source's draws are the ones made before even sources existed.)"""
    from lesionforge.conditioning.masks import place_mask

    j = int(rng.integers(len(backgrounds)))
    fov = field_of_view_of(backgrounds.images[j])
    for _ in range(MAX_PLACEMENT_TRIES):
        mask, info = _drawn(masks_from, rng, seed, i)
        placed = place_mask(mask, fov, rng)
        if placed is not None:
            return j, placed, info
        if getattr(masks_from, "even", False):
            j = int(rng.integers(len(backgrounds)))
            fov = field_of_view_of(backgrounds.images[j])
    raise ConfigError(f"no mask fitted inside a background's field of view in {MAX_PLACEMENT_TRIES} draws")


def _class_of(info: dict, real: PairArrays | None) -> str | None:
    """Class of a drawn mask: given by the source, else that of the real sample it was derived from."""
    if info.get("label_class") is not None or real is None or info.get("source_id") not in real.ids:
        return info.get("label_class")
    return real.classes[real.ids.index(info["source_id"])]


def _mask_info(info: dict) -> dict:
    """Mask-source info as provenance fields (plain JSON types)."""
    plain = json.loads(json.dumps(info, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    return {"mask_source": plain.pop("mask_source", None), "source_id": plain.pop("source_id", None),
            "mask_info": plain}


def _draw(pipe: LesionPipeline, plans: list[Plan], sampling: SamplingConfig, seed: int, out_dir: Path,
          common: dict, strength: float = 1.0) -> list[Sample]:
    """Draw the samples of ``plans`` in one pipeline call and write their files; returns their manifest rows."""
    out = pipe(None if plans[0].mask is None else np.stack([p.mask for p in plans]),
               None if plans[0].image is None else np.stack([p.image for p in plans]),
               [p.prompt for p in plans], [p.label_class for p in plans],
               seeds=[sample_seed(seed, p.index) for p in plans], sampling=sampling, strength=strength)
    rows = []
    for k, p in enumerate(plans):
        extra = {} if out.mask_cleaning is None else {"mask_source": "joint", "mask_cleaning": out.mask_cleaning[k]}
        write_image(out_dir / "images" / f"{p.id}.png", out.images[k])
        write_mask(out_dir / "masks" / f"{p.id}.png", out.masks[k])
        prov = Provenance(**common, seed=seed, prompt=p.prompt, sample_index=p.index, **p.info, **extra)
        rows.append(Sample(id=p.id, image=f"images/{p.id}.png", masks=[f"masks/{p.id}.png"], origin="synthetic",
                           provenance=prov, **{"class": p.label_class}))
    return rows
