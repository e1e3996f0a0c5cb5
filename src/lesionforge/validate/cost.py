"""Cost and agreement of the single-step latent validator against the pixel-space one."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from lesionforge.data.arrays import image_to_tensor
from lesionforge.validate.filter import auto_threshold, keep_decisions, score_pairs
from lesionforge.validate.validator import Validator


def _ms_per_sample(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, batch_size: int,
                   repeats: int) -> float:
    """Best-of-``repeats`` wall time of ``fn`` over ``inputs`` in batches, in ms per sample; the first pass
    is a warm-up (kernel selection per batch shape). Best-of resists interference from other processes."""
    with torch.no_grad():
        best = float("inf")
        for r in range(repeats + 1):
            start = time.perf_counter()
            for i in range(0, len(inputs), batch_size):
                fn(inputs[i : i + batch_size])
            if r:
                best = min(best, time.perf_counter() - start)
    return 1000.0 * best / len(inputs)


def timing(latent: Validator, pixel: Validator, images: np.ndarray, batch_size: int = 16,
           repeats: int = 5) -> dict[str, float]:
    """ms per sample of: the latent segmenter given latents (``latent_given_latents``), encode + latent
    segmenter from pixels, decode + pixel segmenter from latents, and the pixel segmenter given pixels.
    ``images`` uint8 (N, H, W, C) at the validators' resolution."""
    x = image_to_tensor(images)
    z = torch.cat([latent.codec.encode(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    t = int(latent.info["eval_timestep"])
    seg, codec, pix = latent.segmenter, latent.codec, pixel.segmenter
    routes = {
        "latent_given_latents": (lambda b: seg.predict(b, t), z),
        "encode_plus_latent": (lambda b: seg.predict(codec.encode(b), t), x),
        "decode_plus_pixel": (lambda b: pix.predict(codec.decode(b)), z),
        "pixel_given_pixels": (pix.predict, x),
    }
    for fn, inputs in routes.values():  # the process's first passes are slow (allocator, thread pool start-up)
        _ms_per_sample(fn, inputs, batch_size, 1)
    out = {name: _ms_per_sample(fn, inputs, batch_size, repeats) for name, (fn, inputs) in routes.items()}
    out["ratio_decode_pixel_over_latent"] = out["decode_plus_pixel"] / out["latent_given_latents"]
    return out


def agreement(latent: Validator, pixel: Validator, images: np.ndarray, intended: np.ndarray,
              threshold_latent: Literal["auto"] | float = "auto",
              threshold_pixel: Literal["auto"] | float = "auto") -> dict[str, Any]:
    """How often the two validators make the same keep/reject call on pairs ``images`` uint8 (N, H, W, C),
    ``intended`` (N, H, W); plus the pixel validator's mean Dice on the samples the latent one kept/rejected."""
    s_lat, s_pix = score_pairs(latent, images, intended), score_pairs(pixel, images, intended)
    thr_lat = auto_threshold(latent)[0] if threshold_latent == "auto" else float(threshold_latent)
    thr_pix = auto_threshold(pixel)[0] if threshold_pixel == "auto" else float(threshold_pixel)
    k_lat, k_pix = keep_decisions(s_lat, thr_lat), keep_decisions(s_pix, thr_pix)

    def pixel_dice(sel: np.ndarray) -> float | None:
        return float(s_pix["dice"][sel].mean()) if sel.any() else None

    return {
        "n": len(images), "threshold_latent": thr_lat, "threshold_pixel": thr_pix,
        "acceptance_latent": float(k_lat.mean()), "acceptance_pixel": float(k_pix.mean()),
        "agreement": float((k_lat == k_pix).mean()),
        "both_kept": int((k_lat & k_pix).sum()), "both_rejected": int((~k_lat & ~k_pix).sum()),
        "pixel_dice_of_latent_kept": pixel_dice(k_lat), "pixel_dice_of_latent_rejected": pixel_dice(~k_lat),
        "dice_correlation": _correlation(s_lat["dice"], s_pix["dice"]),
    }


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation; None when undefined (fewer than 3 values or a constant series)."""
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])
