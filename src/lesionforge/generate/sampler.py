"""Few-step sampling (DDIM, DPM-Solver++ and its stochastic SDE variant) or 1000-step DDPM, with classifier-free
guidance and RePaint-style inpainting. Deterministic per sample: sample ``i`` of a run with seed ``s`` draws all
its noise from its own ``torch.Generator`` seeded by :func:`sample_seed` ``(s, i)``, and the network always runs
on micro-batches of one fixed size (the last one padded), because convolution kernels pick their algorithm by
batch size and few-step solvers amplify those 1e-6 differences into visible ones; so a sample is bit-identical
whatever the batch size or the resume point.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from lesionforge.errors import ConfigError
from lesionforge.generate.config import MULTISTEP_SAMPLERS, SamplerName
from lesionforge.generate.models import Conditions, LesionGenerator

SAMPLERS = typing.get_args(SamplerName)
#: Rows per network call during sampling (see the module docstring); outputs depend on it, not on batch size.
MICRO_BATCH = 8


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample ``index`` in a run seeded ``seed`` (a SeedSequence mix, so neighbours are unrelated)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def make_scheduler(name: str, gen: LesionGenerator, steps: int):
    """A fresh diffusers scheduler ``name`` built from the generator's training schedule, with ``steps`` set.

    Timesteps are "leading" (the first one below 1000): at t = 999 the cosine schedule leaves almost no
    signal, and the data prediction of a few-step solver there amplifies any error ~1000 fold. In pixel
    space the predicted clean image is also clipped to [-1, 1] (thresholding for DPM-Solver++).
    """
    base = gen.noise_scheduler().config
    pixel = gen.cfg.space == "pixel"
    spacing = {"timestep_spacing": "leading", "steps_offset": 1}
    if name == "ddim":
        sched = DDIMScheduler.from_config(base, clip_sample=pixel, set_alpha_to_one=True, **spacing)
    elif name in MULTISTEP_SAMPLERS:
        # sde-dpm++: DPM-Solver++ 2M with fresh noise at every step (SDE form), which, like ancestral DDPM,
        # washes out the errors a deterministic few-step solver carries to the end (docs/generators.md)
        algorithm = "sde-dpmsolver++" if name == "sde-dpm++" else "dpmsolver++"
        sched = DPMSolverMultistepScheduler.from_config(base, algorithm_type=algorithm, solver_order=2,
                                                        thresholding=pixel, sample_max_value=1.0, **spacing)
    elif name == "ddpm":
        sched = DDPMScheduler.from_config(base, clip_sample=pixel)
    else:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")
    sched.set_timesteps(steps)
    return sched


def guided_prediction(
    gen: LesionGenerator, x: torch.Tensor, t: torch.Tensor, cond: Conditions, uncond: Conditions | None,
    scale: float | torch.Tensor,
) -> torch.Tensor:
    """Classifier-free guidance ``uncond + scale * (cond - uncond)``, cond and uncond in one batched pass.

    ``scale``: a number, or a map (B, 1, h, w) on the grid of ``x`` (guidance only where it is not 1, e.g. near
    the label: ``SamplingConfig.guidance_region``). ``scale == 1`` (or no droppable condition) returns the
    conditional prediction itself, bit for bit.
    """
    if uncond is None or (not torch.is_tensor(scale) and scale == 1.0):
        return gen(x, t, cond)
    both = gen(torch.cat([x, x]), torch.cat([t, t]), cond.cat(uncond))
    c, u = both.chunk(2)
    return u + scale * (c - u)


@dataclass
class InpaintGuide:
    """Known content for inpainting: ``known`` (B, x, h, w) clean background (pixels or latents) and
    ``region`` (B, 1, h, w) {0, 1}, 1 where new content is generated."""

    known: torch.Tensor
    region: torch.Tensor


@torch.no_grad()
def sample(
    gen: LesionGenerator,
    cond: Conditions,
    seeds: list[int],
    *,
    sampler: str = "dpm++",
    steps: int = 25,
    guidance_scale: float | torch.Tensor = 1.0,
    uncond: Conditions | None = None,
    inpaint: InpaintGuide | None = None,
    repaint_jumps: int = 0,
    grid: tuple[int, int] | None = None,
    eta: float = 0.0,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    """Draw ``len(seeds)`` samples -> ``x0`` (B, x, h, w) (pixels in [-1, 1] or latents).

    ``seeds``: one per sample (see :func:`sample_seed`). ``guidance_scale``: a number or a map (B, 1, h, w), see
    :func:`guided_prediction`. ``grid``: (h, w) of ``x`` when there are no
    spatial conditions (``joint``). ``repaint_jumps``: extra re-noise/re-denoise rounds per step that
    harmonise the inpainted border (RePaint); needs a stateless sampler (ddim or ddpm). ``eta``: DDIM's
    stochasticity (0: deterministic), its noise drawn from the samples' own generators. ``init`` (same shape as
    ``x``) with ``strength`` < 1: SDEdit, the run starts from ``init`` noised to the timestep that leaves the last
    ``round(strength * steps)`` steps (at least one) and denoises from there, so what ``init`` shows (a pasted
    lesion) is re-drawn rather than drawn from pure noise; ``strength`` 1 ignores ``init``, bit for bit.
    """
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"strength must lie in (0, 1], got {strength}")
    if strength < 1.0 and init is None:
        raise ConfigError("strength < 1 re-draws an init image (SDEdit): give init")
    if repaint_jumps and sampler in MULTISTEP_SAMPLERS:
        raise ConfigError("repaint_jumps needs sampler 'ddim' or 'ddpm' (DPM-Solver++ keeps a multistep history)")
    device = next(gen.parameters()).device
    gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    h, w = grid if cond.spatial is None else cond.spatial.shape[-2:]
    shape = (len(seeds), gen.layout.x, h, w)
    x = randn_tensor(shape, generator=gens, device=torch.device("cpu")).to(device)
    sched = make_scheduler(sampler, gen, steps)
    x = x * sched.init_noise_sigma
    # ``Conditions.nulled`` returns the conditions themselves when nothing can be dropped: no guidance then
    uncond = uncond.to(device) if uncond is not None and uncond is not cond else None
    cond = cond.to(device)
    if torch.is_tensor(guidance_scale):
        guidance_scale = guidance_scale.to(device)
    timesteps = list(sched.timesteps)
    if strength < 1.0:
        # the last k steps of the same schedule, as diffusers' img2img pipelines do (set_begin_index tells a
        # multistep solver where it starts); every scheduler here is variance-preserving with init sigma 1
        k = max(1, round(strength * len(timesteps)))
        start = len(timesteps) - k
        timesteps = timesteps[start:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start)
        a = sched.alphas_cumprod[int(timesteps[0])].to(x.dtype)
        x = a.sqrt() * init.to(device, x.dtype) + (1 - a).sqrt() * x
    for i, t in enumerate(timesteps):
        t_prev = int(timesteps[i + 1]) if i + 1 < len(timesteps) else -1
        for jump in range(repaint_jumps + 1):
            x_prev = _step(gen, sched, x, t, cond, uncond, guidance_scale, gens, eta)
            if inpaint is not None:
                x_prev = _blend_known(sched, x_prev, inpaint, t_prev, gens)
            if jump < repaint_jumps and t_prev >= 0:
                x = _renoise(sched, x_prev, int(t), t_prev, gens)
        x = x_prev
    return x


def _fixed_batches(gen, x, t, cond, uncond, scale) -> torch.Tensor:
    """:func:`guided_prediction` over micro-batches of exactly :data:`MICRO_BATCH` rows."""
    out = []
    for start in range(0, len(x), MICRO_BATCH):
        idx = torch.arange(start, start + MICRO_BATCH).clamp(max=len(x) - 1)  # pad by repeating the last row
        n = min(MICRO_BATCH, len(x) - start)
        pred = guided_prediction(gen, x[idx], t[idx], cond.rows(idx), None if uncond is None else uncond.rows(idx),
                                 scale[idx.to(scale.device)] if torch.is_tensor(scale) else scale)
        out.append(pred[:n])
    return torch.cat(out)


def _step(gen, sched, x, t, cond, uncond, scale, gens, eta: float = 0.0) -> torch.Tensor:
    tt = torch.full((len(x),), int(t), device=x.device, dtype=torch.long)
    pred = _fixed_batches(gen, sched.scale_model_input(x, t), tt, cond, uncond, scale)
    if isinstance(sched, DDPMScheduler):
        return sched.step(pred, t, x, generator=gens).prev_sample
    if isinstance(sched, DPMSolverMultistepScheduler) and sched.config.algorithm_type == "sde-dpmsolver++":
        # the step's noise from the samples' own generators, drawn on the CPU as everywhere here
        return sched.step(pred, t, x, variance_noise=_noise_like(x, gens)).prev_sample
    if eta:
        return sched.step(pred, t, x, eta=eta, generator=gens).prev_sample
    return sched.step(pred, t, x).prev_sample


def _noise_like(x: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
    return randn_tensor(x.shape, generator=gens, device=torch.device("cpu")).to(x.device)


def _blend_known(sched, x_prev: torch.Tensor, guide: InpaintGuide, t_prev: int, gens) -> torch.Tensor:
    """Outside the region, replace the sample by the background noised to the same level (RePaint)."""
    known = guide.known.to(x_prev.device)
    if t_prev >= 0:  # every sampler here is variance-preserving on the training alphas, so one formula serves
        a = sched.alphas_cumprod[t_prev].to(known.dtype)
        known = a.sqrt() * known + (1 - a).sqrt() * _noise_like(known, gens)
    region = guide.region.to(x_prev.device)
    return region * x_prev + (1 - region) * known


def _renoise(sched, x_prev: torch.Tensor, t: int, t_prev: int, gens) -> torch.Tensor:
    """One forward jump q(x_t | x_t_prev): RePaint's resampling that lets both regions agree."""
    ac = sched.alphas_cumprod
    ratio = (ac[t] / ac[t_prev]).to(x_prev.dtype)
    return ratio.sqrt() * x_prev + (1 - ratio).sqrt() * _noise_like(x_prev, gens)
