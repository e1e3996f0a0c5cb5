"""``lesionforge synthesize``: draw N new labelled pairs from a trained generator.

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
import torch

from lesionforge.data.arrays import PairArrays, image_to_tensor, mask_to_tensor, tensor_to_image
from lesionforge.data.io import write_image, write_mask
from lesionforge.data.manifest import Provenance, Sample, append_manifest, drop_torn_tail, read_manifest
from lesionforge.devices import resolve_device
from lesionforge.errors import ConfigError, OverwriteError
from lesionforge.generate.batches import build_spatial, decode_samples, dilate_masks, encode, latent_mask
from lesionforge.generate.models import Conditions, LesionGenerator, read_meta
from lesionforge.generate.sampler import InpaintGuide, sample, sample_seed
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
    sampler: str = "dpm++",
    steps: int = 25,
    guidance_scale: float | None = None,
    batch_size: int = 16,
    repaint_jumps: int | None = None,
    prompts=None,
    resume: bool = True,
    overwrite: bool = False,
    codec=None,
    text_encoder=None,
    progress: bool = True,
    indices: Sequence[int] | None = None,
) -> list[Sample]:
    """Write ``n`` synthetic pairs to ``out_dir/images``, ``out_dir/masks`` and ``out_dir/manifest.jsonl``.

    Conditions by kind: ``mask2image`` and ``inpaint`` take masks from ``masks_from`` (a mask source:
    ``(rng, n) -> [(mask uint8 (H, W), info)]``); ``inpaint`` paints into lesion-free ``backgrounds``
    (mask placed inside the field of view; pixels outside the mask are the background's, bit for bit);
    ``edge-text`` cycles over ``real`` pairs (their masks are the labels); ``joint`` needs nothing.
    ``guidance_scale`` / ``repaint_jumps`` None use the generator's defaults. Returns every sample of the
    manifest (the real ``real`` pairs also give the class of a jittered mask's source sample).
    ``indices``: draw only these sample indices of the ``n`` (one shard of a sharded synthesis, see
    :mod:`~lesionforge.generate.shards`); each sample is the same as in the whole run.
    """
    gen_dir = Path(generator_dir)
    meta = read_meta(gen_dir)
    device = resolve_device()  # the same choice as the trainers' default
    gen = LesionGenerator.from_pretrained(gen_dir).to(device)
    if codec is None and meta["space"] == "latent":
        from lesionforge.generate.autoencoder import LatentCodec

        codec = LatentCodec.from_pretrained(meta["autoencoder"], device=device)
    kind, scale = gen.cfg.kind, gen.cfg.guidance_scale if guidance_scale is None else guidance_scale
    repaint_jumps = gen.cfg.repaint_jumps if repaint_jumps is None else repaint_jumps
    _check_inputs(kind, masks_from, backgrounds, real)
    out_dir = claim_output(out_dir, "synthetic set", overwrite=overwrite, resume=resume)
    common = {"generator": kind, "checkpoint": str(gen_dir.resolve()), "checkpoint_hash": _weights_hash(gen_dir),
              "sampler": sampler, "steps": steps, "guidance_scale": scale}
    _check_same_run(out_dir, {**common, "seed": seed, "repaint_jumps": repaint_jumps})
    common["code_version"] = code_version()
    if kind == "inpaint":
        common.update(repaint_jumps=repaint_jumps, inpaint_dilate=gen.cfg.inpaint_dilate)
    text = TextConditioner(gen.cfg, prompts, text_encoder)
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
            plans = [_plan(kind, seed, i, masks_from, backgrounds, real, text) for i in todo[start:start + batch_size]]
            rows = _generate(gen, plans, text, codec, sampler, steps, scale, repaint_jumps, seed, out_dir, common)
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


def _check_inputs(kind: str, masks_from, backgrounds: PairArrays | None, real: PairArrays | None) -> None:
    if kind in ("mask2image", "inpaint") and masks_from is None:
        raise ConfigError(f"kind {kind!r} needs masks_from (a mask source)")
    if kind == "inpaint" and (backgrounds is None or len(backgrounds) == 0):
        raise ConfigError("kind 'inpaint' needs lesion-free backgrounds")
    if kind == "edge-text" and (real is None or not real.has_mask.any()):
        raise ConfigError("kind 'edge-text' needs real labelled pairs (their masks are the labels)")


def _plan(kind: str, seed: int, i: int, masks_from, backgrounds: PairArrays | None, real: PairArrays | None,
          text: TextConditioner) -> Plan:
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
        mask, minfo = masks_from(rng, 1)[0]
        label_class, info = _class_of(minfo, real), _mask_info(minfo)
    elif kind == "inpaint":
        j = int(rng.integers(len(backgrounds)))
        image = backgrounds.images[j]
        mask, minfo = _placed_mask(masks_from, field_of_view_of(image), rng)
        label_class, info = _class_of(minfo, real), {**_mask_info(minfo), "background_id": backgrounds.ids[j]}
    area = np.zeros((1, 1, 1)) if mask is None else mask[None]
    sid = _sample_id(kind, seed, i)
    prompt = text.prompts([sid], [label_class], area, rng)[0]
    return Plan(i, sid, None if mask is None else (mask > 0).astype(np.uint8), image, prompt, label_class, info)


def field_of_view_of(image: np.ndarray) -> np.ndarray:
    """Where a lesion may go on ``image`` uint8 (H, W, C): bool (H, W) (no black border, no overlays)."""
    from lesionforge.conditioning.masks import field_of_view

    return field_of_view(image)


def _placed_mask(masks_from, fov: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Draw masks until one fits inside ``fov`` (a large lesion may fit nowhere on a small FOV)."""
    from lesionforge.conditioning.masks import place_mask

    for _ in range(MAX_PLACEMENT_TRIES):
        mask, info = masks_from(rng, 1)[0]
        placed = place_mask(mask, fov, rng)
        if placed is not None:
            return placed, info
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


def _conditions(gen: LesionGenerator, plans: list[Plan], text: TextConditioner, codec):
    """Batched ``(cond, uncond, inpaint guide, grid)`` for ``plans``."""
    kind = gen.cfg.kind
    t, tm, labels = text.encode([p.prompt for p in plans], [p.label_class for p in plans])
    spatial = guide = None
    side = gen.cfg.resolution // (codec.downsample_factor if codec is not None else 1)
    if kind != "joint":
        masks = np.stack([p.mask for p in plans])
        region = dilate_masks(masks, gen.cfg.inpaint_dilate) if kind == "inpaint" else masks
        images = image_to_tensor(np.stack([p.image for p in plans])) if plans[0].image is not None else None
        m = mask_to_tensor(region)
        with torch.no_grad():
            spatial = build_spatial(kind, images, m, codec)
        if kind == "inpaint":
            known = images if codec is None else encode(codec, images)
            factor = 1 if codec is None else codec.downsample_factor
            guide = InpaintGuide(known=known, region=latent_mask(m, factor))
    cond = Conditions(spatial, t, tm, labels)
    null_t, null_m, null_c = text.null()
    return cond, cond.nulled(null_t, null_m, null_c), guide, (side, side)


def _generate(gen, plans: list[Plan], text, codec, sampler, steps, scale, jumps, seed, out_dir: Path,
              common: dict) -> list[Sample]:
    cond, uncond, guide, grid = _conditions(gen, plans, text, codec)
    x0 = sample(gen, cond, [sample_seed(seed, p.index) for p in plans], sampler=sampler, steps=steps,
                guidance_scale=scale, uncond=uncond, inpaint=guide, repaint_jumps=jumps, grid=grid)
    with torch.no_grad():
        images, prob = decode_samples(gen.cfg.kind, x0, codec)
    images = tensor_to_image(images)
    rows = []
    for k, p in enumerate(plans):
        img, mask, extra = images[k], p.mask, {}
        if gen.cfg.kind == "inpaint":
            # exact paste-back: outside the label mask every pixel is the background's own uint8 value
            img = np.where(p.mask[..., None] > 0, img, p.image)
        if gen.cfg.kind == "joint":
            from lesionforge.conditioning.masks import clean_generated_mask

            mask, cleaning = clean_generated_mask(prob[k, 0].cpu().numpy())
            extra = {"mask_source": "joint", "mask_cleaning": cleaning}
        write_image(out_dir / "images" / f"{p.id}.png", img)
        write_mask(out_dir / "masks" / f"{p.id}.png", mask)
        prov = Provenance(**common, seed=seed, prompt=p.prompt, sample_index=p.index, **p.info, **extra)
        rows.append(Sample(id=p.id, image=f"images/{p.id}.png", masks=[f"masks/{p.id}.png"], origin="synthetic",
                           provenance=prov, **{"class": p.label_class}))
    return rows
