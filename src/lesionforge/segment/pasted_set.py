"""Copy-paste onto lesion-free backgrounds, written as a synthetic set: the non-diffusion twin of an inpainting set.

Each pair is one real lesion (a connected component of a labelled pair, warped as :mod:`.copypaste` warps it)
pasted onto a lesion-free background, the same backgrounds the inpainting generator paints into, and written as
a synthetic set (``images/``, ``masks/``, ``manifest.jsonl`` with provenance). An experiment arm then mixes it
exactly as it mixes a generator's set (same count, same ratio, same filter), so a diffusion arm's gain over this
arm is the generator's own and not that of the extra backgrounds (issue 13, "a fairer strong baseline").

Sample ``i`` of seed ``s`` draws every choice from ``numpy.random.default_rng([s, i])``, like ``synthesize``:
the same seed gives the same bytes, and a stopped run resumes at the first sample missing from the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesionforge.data.arrays import PairArrays
from lesionforge.data.io import write_image, write_mask
from lesionforge.data.manifest import Provenance, Sample, append_manifest, drop_torn_tail, read_manifest
from lesionforge.errors import ConfigError
from lesionforge.outputs import announce_resume, claim_output
from lesionforge.segment.config import CopyPasteConfig
from lesionforge.segment.copypaste import paste_lesion, transformed_lesion
from lesionforge.utils import code_version

MANIFEST = "manifest.jsonl"
GENERATOR = "copy-paste"  # Provenance.generator of these pairs
MAX_DRAWS = 50  # (lesion, background) draws tried at one scale
SHRINK = (1.0, 0.8, 0.64, 0.51)  # scale factors tried in turn before a sample is declared impossible
BATCH = 32  # rows appended to the manifest per write


def pasted_pair(i: int, seed: int, real: PairArrays, backgrounds: PairArrays, cfg: CopyPasteConfig,
                ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sample ``i``: (image uint8 (H, W, C), mask uint8 (H, W) in {0, 1}, provenance fields). The lesion donors
    cycle over the labelled pairs with a lesion (each used ``n / len(donors)`` times, as ``n_per_real`` masks
    per labelled pair are for a generator); the background is drawn at random."""
    donors = np.flatnonzero(real.has_mask & real.masks.reshape(len(real), -1).any(axis=1))
    if len(donors) == 0:
        raise ConfigError("copy-paste onto backgrounds needs labelled pairs with a lesion; none were given")
    if backgrounds is None or len(backgrounds) == 0:
        raise ConfigError("copy-paste onto backgrounds needs lesion-free backgrounds in the dataset")
    rng = np.random.default_rng([seed, i])
    d = int(donors[i % len(donors)])
    # a lesion too large for any background's field of view at the configured scale is shrunk step by step
    # (x0.8 per MAX_DRAWS failed draws): a large polyp still gets its pasted pairs, slightly smaller
    for k in range(MAX_DRAWS * len(SHRINK)):
        b = int(rng.integers(len(backgrounds)))
        shrink = SHRINK[k // MAX_DRAWS]
        patch, hard = transformed_lesion(real.images[d], real.masks[d], rng,
                                         (cfg.scale[0] * shrink, cfg.scale[1] * shrink))
        empty = np.zeros(backgrounds.images[b].shape[:2], dtype=np.uint8)
        image, mask, ok = paste_lesion(backgrounds.images[b], empty, patch, hard, rng, cfg.fov_threshold,
                                       cfg.feather_sigma)
        if ok:
            return image, (mask > 0).astype(np.uint8), {"source_id": real.ids[d], "background_id": backgrounds.ids[b]}
    raise ConfigError(f"lesion of {real.ids[d]} fitted inside no background's field of view in "
                      f"{MAX_DRAWS * len(SHRINK)} draws, even shrunk to {SHRINK[-1]:.2f} of its scale")


def write_pasted_set(out_dir: str | Path, n: int, real: PairArrays, backgrounds: PairArrays,
                     cfg: CopyPasteConfig | None = None, seed: int = 0, resume: bool = True,
                     overwrite: bool = False) -> list[Sample]:
    """Write ``n`` pairs of real lesions pasted onto ``backgrounds`` into ``out_dir``; returns the manifest's
    samples. The folder is claimed like a generator's synthetic set (resume only a set made by this command)."""
    cfg = cfg or CopyPasteConfig()
    out = claim_output(out_dir, "synthetic set", overwrite=overwrite, resume=resume)
    done: set[str] = set()
    if (out / MANIFEST).is_file():
        drop_torn_tail(out / MANIFEST)
        done = {s.id for s in read_manifest(out / MANIFEST, resolve=False)}
    todo = [i for i in range(n) if sample_id(seed, i) not in done]
    if done and todo:
        announce_resume(out, f"sample {todo[0]} ({n - len(todo)} of {n} already in {MANIFEST})")
    common = {"generator": GENERATOR, "seed": seed, "mask_source": "real", "code_version": code_version(),
              "copy_paste": cfg.model_dump(mode="json")}
    for start in range(0, len(todo), BATCH):
        rows = []
        for i in todo[start:start + BATCH]:
            image, mask, info = pasted_pair(i, seed, real, backgrounds, cfg)
            sid = sample_id(seed, i)
            write_image(out / "images" / f"{sid}.png", image)
            write_mask(out / "masks" / f"{sid}.png", mask)
            src = real.ids.index(info["source_id"])
            rows.append(Sample(id=sid, image=f"images/{sid}.png", masks=[f"masks/{sid}.png"], origin="synthetic",
                               provenance=Provenance(**common, **info, sample_index=i),
                               **{"class": real.classes[src]}))
        append_manifest(out / MANIFEST, rows)
    return read_manifest(out / MANIFEST, resolve=False)


def sample_id(seed: int, index: int) -> str:
    return f"syn-{GENERATOR}-s{seed}-{index:06d}"
