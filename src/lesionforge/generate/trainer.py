"""One trainer for every generator kind: DDPM noise-prediction training with EMA, AdamW, cosine schedule
with warm-up, gradient clipping, GPU mixed precision (accelerate), checkpoints and exact resume.

Exact resume: every random draw of step ``s`` (batch, flips, masks, dropout, noise, timesteps) comes from
generators seeded by ``(seed, s, process)``, and a checkpoint holds model, EMA, optimizer, LR schedule and
torch RNG state, so "3 steps, kill, resume 3" ends with the weights of "6 steps".
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel, compute_snr
from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

from lesionforge.checkpoints import load_tensor_state, load_torch_state, save_tensor_state, save_torch_state
from lesionforge.config import save_config
from lesionforge.data.arrays import PairArrays
from lesionforge.devices import data_on_device, resolve_device
from lesionforge.errors import CheckpointError, ConfigError
from lesionforge.generate.batches import Codec
from lesionforge.generate.build import build_generator
from lesionforge.generate.config import GeneratorConfig
from lesionforge.generate.models import LesionGenerator
from lesionforge.generate.report import save_loss_curve, save_sample_grid
from lesionforge.generate.trainbatch import BatchMaker
from lesionforge.outputs import announce_resume, claim_output
from lesionforge.progress import StageProgress
from lesionforge.utils import code_version, seed_everything, write_json_atomic

CHECKPOINT_PREFIX = "checkpoint-"


def train_generator(
    cfg: GeneratorConfig,
    train: PairArrays,
    out_dir: str | Path,
    *,
    unlabelled: PairArrays | None = None,
    backgrounds: PairArrays | None = None,
    prompts=None,
    resume: bool = True,
    codec: Codec | None = None,
    text_encoder=None,
    mask_source=None,
    progress: bool = True,
    init_from: str | Path | None = None,
    resident: bool | None = None,
) -> Path:
    """Train a generator of ``cfg.kind`` on ``train`` (uint8 pairs at ``cfg.resolution``) into ``out_dir``.

    ``unlabelled`` / ``backgrounds``: image-only data for the self-supervised part of ``inpaint``.
    ``prompts``: see :func:`lesionforge.generate.textcond.prompt_function`. ``codec``: the latent
    autoencoder (default: loaded from ``cfg.autoencoder`` when ``cfg.space == "latent"``).
    ``mask_source``: random masks for self-supervised inpainting (default: size-controlled source).
    ``init_from``: a finished generator folder of the same architecture (a pretrained base, see
    :func:`pretrain_config`) whose weights the training starts from instead of a fresh initialisation.
    ``resident``: hold the training arrays on the device and build the batches and the step's noise there
    (default: on CUDA, :func:`~lesionforge.devices.data_on_device`; on the CPU it trains to the same bytes).
    Writes ``checkpoint-<step>/`` every ``cfg.checkpoint_every`` steps, ``samples/``, ``loss.png`` and
    the final EMA model (``unet/``, ``scheduler/``, ``lesionforge.json``); returns ``out_dir``.
    """
    out_dir = claim_output(out_dir, "generator run", resume=resume)
    for what, arrays in (("training set", train), ("unlabelled set", unlabelled), ("backgrounds", backgrounds)):
        _check_data(cfg, arrays, what)
    codec = codec or load_codec(cfg)
    # several processes (`accelerate launch --num_processes K -m lesionforge train-generator ...`): data parallel, each
    # rank draws its own batches (seeded by its index), gradients averaged; the LR schedule follows cfg.steps
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # accelerate places a single process on the current CUDA device
    accel = Accelerator(cpu=device.type == "cpu", mixed_precision=_precision(cfg, device),
                        step_scheduler_with_optimizer=False)
    seed_everything(cfg.seed)  # initial weights depend on the seed only
    latent = (codec.latent_channels, codec.downsample_factor) if codec is not None else (None, 1)
    gen = build_generator(cfg, *latent)
    if init_from is not None:
        _start_from(gen, Path(init_from))
    params = gen.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True, power=0.75)
    start, losses, seconds_before = 0, [], 0.0
    latest = latest_checkpoint(out_dir) if resume else None
    if latest is not None:
        start, losses, seconds_before = _load_checkpoint(latest, gen, opt, lr_sched, ema)
        announce_resume(out_dir, f"step {start} of {cfg.steps} ({latest.name})")
    t0 = time.perf_counter()
    gen, opt, lr_sched = accel.prepare(gen, opt, lr_sched)
    ema.to(accel.device)
    if codec is not None and hasattr(codec, "to"):
        codec.to(accel.device)
    save_config(cfg, out_dir / "config.yaml")
    held = accel.device if data_on_device(accel.device, resident) else None
    maker = BatchMaker(cfg, train, unlabelled, backgrounds, codec, text_encoder, prompts, mask_source, held)
    noise_sched = accel.unwrap_model(gen).noise_scheduler()
    with _progress(progress) as bar:
        task = bar.add_task(f"training {cfg.kind}", total=cfg.steps, completed=start)
        out_of_time = _out_of_time(cfg, accel, seconds_before)  # a resumed run that had spent its budget
        for step in range(start, cfg.steps):
            if out_of_time:
                break
            loss = _train_step(gen, opt, lr_sched, ema, noise_sched, maker, accel, cfg, step)
            losses.append(loss)
            bar.update(task, advance=1, description=f"training {cfg.kind} loss {np.mean(losses[-50:]):.4f}")
            done = step + 1
            out_of_time = _out_of_time(cfg, accel, seconds_before + time.perf_counter() - t0)
            if accel.is_main_process and (done % cfg.checkpoint_every == 0 or done == cfg.steps or out_of_time):
                save_checkpoint(out_dir, done, accel.unwrap_model(gen), opt, lr_sched, ema, losses,
                                seconds_before + time.perf_counter() - t0)
            if accel.is_main_process and cfg.sample_every and done % cfg.sample_every == 0:
                _sample_grid(out_dir, done, accel.unwrap_model(gen), ema, maker)
    digests = _rank_digests(accel, accel.unwrap_model(gen), ema)
    if accel.is_main_process:
        _finish(out_dir, accel.unwrap_model(gen), ema, maker, losses, cfg, seconds_before + time.perf_counter() - t0,
                digests, None if init_from is None else str(init_from))
    accel.wait_for_everyone()  # the final model is written before any rank returns it
    return out_dir


def _rank_digests(accel, gen: LesionGenerator, ema: EMAModel) -> list[list[float]] | None:
    """With several processes: per rank, the float64 sum and sum of squares of every trained and EMA weight,
    gathered; ranks that drifted apart (they must not: same init, averaged gradients) are an error."""
    if accel.num_processes == 1:
        return None
    tensors = [*gen.trainable_parameters(), *ema.shadow_params]
    mine = torch.stack([torch.stack([t.detach().double().sum(), t.detach().double().square().sum()])
                        for t in tensors]).flatten().to(accel.device)
    every = accel.gather(mine[None]).cpu()
    if not all(torch.equal(every[0], r) for r in every[1:]):
        raise CheckpointError(f"the {accel.num_processes} training processes ended with different weights")
    return every.tolist()


def _out_of_time(cfg: GeneratorConfig, accel: Accelerator, seconds: float) -> bool:
    """Has training spent ``cfg.max_train_seconds``? With several processes every rank stops at the same step
    (any rank past the budget stops them all), so their weights stay equal."""
    if cfg.max_train_seconds is None:
        return False
    past = seconds >= cfg.max_train_seconds
    if accel.num_processes == 1:
        return past
    flags = accel.gather(torch.tensor([float(past)], device=accel.device))
    return bool(flags.max().item())


def _precision(cfg: GeneratorConfig, device: torch.device) -> str:
    """GPU mixed precision: bf16 where the GPU has it (no loss scaling, fp32's range), else fp16; none on CPU."""
    if not (device.type == "cuda" and cfg.mixed_precision):
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def pretrain_config(cfg: GeneratorConfig) -> GeneratorConfig:
    """The settings of ``cfg``'s pretrained base: the same model trained ``cfg.pretrain_steps`` steps (on images
    without masks; :class:`BatchMaker` builds such batches when it is given no labelled pairs)."""
    if cfg.pretrain_steps is None:
        raise ConfigError("pretrain_config: the config has no pretrain_steps")
    return cfg.model_copy(update={"steps": cfg.pretrain_steps, "pretrain_steps": None})


def _start_from(gen: LesionGenerator, base: Path) -> None:
    """Load the weights of the finished generator ``base`` (same architecture) into ``gen``."""
    saved = LesionGenerator.from_pretrained(base)
    shapes = {k: v.shape for k, v in saved.state_dict().items()}
    if shapes != {k: v.shape for k, v in gen.state_dict().items()}:
        raise ConfigError(f"{base}: the pretrained base has another architecture than this config")
    gen.load_state_dict(saved.state_dict())


def _check_data(cfg: GeneratorConfig, arrays: PairArrays | None, what: str) -> None:
    if arrays is None:
        return
    if len(arrays) == 0:
        raise ConfigError(f"train_generator: the {what} is empty")
    h, w, c = arrays.images.shape[1:]
    if (h, w) != (cfg.resolution, cfg.resolution):
        raise ConfigError(f"{what}: images are {w}x{h} but the config resolution is {cfg.resolution}")
    if c != cfg.image_channels:
        raise ConfigError(f"{what}: images have {c} channels, the config says image_channels: {cfg.image_channels}")


def load_codec(cfg: GeneratorConfig) -> Codec | None:
    """The latent autoencoder named by ``cfg.autoencoder`` (None in pixel space)."""
    if cfg.space != "latent":
        return None
    if cfg.autoencoder is None:
        raise ConfigError("space: latent needs 'autoencoder: PATH' (a LatentCodec folder)")
    from lesionforge.generate.autoencoder import LatentCodec

    return LatentCodec.from_pretrained(cfg.autoencoder)


def _train_step(gen, opt, lr_sched, ema, noise_sched, maker: BatchMaker, accel, cfg, step: int) -> float:
    rng = np.random.default_rng([cfg.seed, step, accel.process_index])
    # data held on the device: the noise is drawn there too (on the CPU the same numbers as the host path)
    g = torch.Generator(maker.device or "cpu").manual_seed(int(rng.integers(2**62)))
    gen.train()
    x0, cond = maker.make(rng)
    x0, cond = x0.to(accel.device), cond.to(accel.device)
    noise = torch.randn(x0.shape, generator=g, device=g.device).to(accel.device)
    t = torch.randint(0, cfg.num_train_timesteps, (len(x0),), generator=g, device=g.device).to(accel.device)
    x_t = noise_sched.add_noise(x0, noise, t)
    target = noise if cfg.prediction_type == "epsilon" else noise_sched.get_velocity(x0, noise, t)
    with accel.autocast():
        pred = gen(x_t, t, cond)
    weights = None if cfg.min_snr_gamma is None else min_snr_weights(noise_sched, t, cfg)
    loss = diffusion_loss(pred.float(), target, cond, cfg, weights)
    accel.backward(loss)
    if accel.sync_gradients:
        accel.clip_grad_norm_(accel.unwrap_model(gen).trainable_parameters(), cfg.grad_clip)
    opt.step()
    lr_sched.step()
    opt.zero_grad(set_to_none=True)
    ema.step(accel.unwrap_model(gen).trainable_parameters())
    return float(loss.detach())


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, cond, cfg: GeneratorConfig,
                   sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of the prediction (B, x, h, w); for ``inpaint`` weighted by region: pixels inside the re-generated
    region weigh 1, those outside ``cfg.outside_loss_weight`` (the region is the last spatial channel, +1 in).

    ``sample_weights`` (B,) (min-SNR-gamma): each sample's own mean is weighted, then the batch averaged;
    None keeps the plain pooled mean, bit for bit."""
    regional = cfg.kind == "inpaint" and cfg.outside_loss_weight != 1.0 and cond.spatial is not None
    weight = None
    if regional:
        region = (cond.spatial[:, -1:] > 0).to(pred.dtype)
        weight = (region + cfg.outside_loss_weight * (1 - region)).expand_as(pred)
    if cond.x_weight is not None:  # channels whose target is unknown (pretraining without masks) weigh 0
        known = cond.x_weight.to(pred).expand_as(pred)
        weight = known if weight is None else weight * known
    if sample_weights is None:
        if weight is None:
            return F.mse_loss(pred, target)
        return ((pred - target) ** 2 * weight).sum() / weight.sum().clamp(min=1.0)
    if weight is None:
        per_sample = ((pred - target) ** 2).mean((1, 2, 3))
    else:
        per_sample = ((pred - target) ** 2 * weight).sum((1, 2, 3)) / weight.sum((1, 2, 3)).clamp(min=1.0)
    return (per_sample * sample_weights.to(per_sample)).mean()


def min_snr_weights(noise_sched, t: torch.Tensor, cfg: GeneratorConfig) -> torch.Tensor:
    """Min-SNR-gamma weights (B,) of timesteps ``t``: min(SNR, gamma) / SNR for epsilon prediction (written
    as min(gamma / SNR, 1), finite where SNR underflows to 0), min(SNR, gamma) / (SNR + 1) for v-prediction;
    SNR from diffusers' ``compute_snr``. Each makes the effective weight on the clean-image error min(SNR, gamma).
    """
    snr = compute_snr(noise_sched, t).float()
    gamma = torch.full_like(snr, cfg.min_snr_gamma)
    if cfg.prediction_type == "v_prediction":
        return torch.minimum(snr, gamma) / (snr + 1.0)
    return torch.clamp(gamma / snr, max=1.0)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The complete ``checkpoint-<step>`` folder with the highest step, or None."""
    found = [(int(p.name.removeprefix(CHECKPOINT_PREFIX)), p) for p in Path(out_dir).glob(f"{CHECKPOINT_PREFIX}*")
             if p.name.removeprefix(CHECKPOINT_PREFIX).isdigit() and (p / "state.json").is_file()]
    return max(found)[1] if found else None


def save_checkpoint(out_dir: Path, step: int, gen: LesionGenerator, opt, lr_sched, ema: EMAModel,
                    losses: list[float], train_seconds: float = 0.0) -> Path:
    """Write ``checkpoint-<step>/`` atomically (temp folder, then rename) and prune old ones."""
    final = out_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = out_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    gen.save_pretrained(tmp / "model")
    save_tensor_state(ema.state_dict(), tmp / "ema")  # EMA weights: safetensors (+ ema.json)
    save_torch_state(opt.state_dict(), tmp / "optimizer.pt")
    save_torch_state(lr_sched.state_dict(), tmp / "lr_scheduler.pt")
    save_torch_state({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    write_json_atomic(tmp / "state.json", {"step": step, "losses": losses, "train_seconds": train_seconds})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _prune(out_dir, gen.cfg.keep_checkpoints)
    return final


def _prune(out_dir: Path, keep: int) -> None:
    steps = sorted(int(p.name.removeprefix(CHECKPOINT_PREFIX)) for p in out_dir.glob(f"{CHECKPOINT_PREFIX}*")
                   if p.name.removeprefix(CHECKPOINT_PREFIX).isdigit())
    for s in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(out_dir / f"{CHECKPOINT_PREFIX}{s}", ignore_errors=True)


#: Settings that may change between a run and its resumption (they do not change the model or the data).
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "sample_every", "keep_checkpoints"}


def _load_checkpoint(path: Path, gen: LesionGenerator, opt, lr_sched, ema: EMAModel
                     ) -> tuple[int, list[float], float]:
    """Restore a checkpoint; returns (step, losses so far, training seconds so far)."""
    saved = LesionGenerator.from_pretrained(path / "model")
    before, now = saved.cfg.model_dump(), gen.cfg.model_dump()
    changed = sorted(k for k in now if before.get(k) != now[k] and k not in RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(f"{path}: cannot resume with a different config ({', '.join(changed)} changed); "
                          "use another output folder")
    try:
        gen.load_state_dict(saved.state_dict())
        # an older checkpoint keeps the EMA weights in a torch.save blob, ema.pt
        legacy = path / "ema.pt"
        ema.load_state_dict(load_torch_state(legacy) if legacy.is_file() else load_tensor_state(path / "ema"))
        opt.load_state_dict(load_torch_state(path / "optimizer.pt"))
        lr_sched.load_state_dict(load_torch_state(path / "lr_scheduler.pt"))
        torch.set_rng_state(load_torch_state(path / "rng.pt")["torch"])
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot resume from this checkpoint ({e})") from e
    return int(state["step"]), list(state["losses"]), float(state.get("train_seconds", 0.0))


def _sample_grid(out_dir: Path, step: int, gen: LesionGenerator, ema: EMAModel, maker: BatchMaker) -> None:
    """Sample with the EMA weights (swapped in, then restored) on a fixed set of training conditions."""
    params = gen.trainable_parameters()
    ema.store(params)
    ema.copy_to(params)
    try:
        save_sample_grid(out_dir / "samples" / f"step-{step:06d}.png", gen.eval(), maker)
    finally:
        ema.restore(params)


def _finish(out_dir: Path, gen: LesionGenerator, ema: EMAModel, maker: BatchMaker, losses: list[float],
            cfg: GeneratorConfig, train_seconds: float, digests: list[list[float]] | None = None,
            base: str | None = None) -> None:
    """Save the EMA weights as the final model (with the training wall time, summed over resumed sessions,
    and the thread count of this last session), a last sample grid and the loss curve."""
    ema.copy_to(gen.trainable_parameters())
    # the steps really trained: fewer than cfg.steps when a time budget (max_train_seconds) stopped it
    gen.eval().save_pretrained(out_dir, extra={"steps": len(losses), "code_version": code_version(),
                                               "autoencoder": cfg.autoencoder, "train_seconds": round(train_seconds, 1),
                                               "torch_threads": torch.get_num_threads(),
                                               **({"rank_digests": digests} if digests else {}),
                                               **({} if base is None else {"pretrained_base": base})})
    save_sample_grid(out_dir / "samples" / "final.png", gen, maker)
    save_loss_curve(out_dir / "loss.png", losses)


def _progress(show: bool) -> StageProgress:
    return StageProgress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeRemainingColumn(), disable=not show)
