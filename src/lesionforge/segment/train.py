"""Segmentation training: a fixed budget of AdamW steps with cosine LR, DiceCE loss, on-the-fly augmentation,
real + synthetic mixing, model selection on validation mDice, exact checkpoint/resume.

Output folder::

    config.yaml        the SegmentConfig of the run
    best/              best-validation checkpoint (model.safetensors + segmenter.json)
    last-<step>/       latest state: weights + state.pt (optimizer, scheduler, RNG, history); ``last.json``
                       names the current one, so a crash while writing never leaves a half checkpoint in use
    run.json           summary written when the budget is spent
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from monai.losses import DiceCELoss
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from lesionforge.checkpoints import WEIGHTS, load_torch_state, load_weights, save_torch_state
from lesionforge.config import save_config
from lesionforge.data.arrays import PairArrays, image_to_tensor, mask_to_tensor
from lesionforge.devices import data_on_device, resolve_device
from lesionforge.errors import CheckpointError, ConfigError, DataError
from lesionforge.outputs import announce_resume, child_path, claim_output
from lesionforge.segment.augment import augment_batch, build_augmentation
from lesionforge.segment.config import SegmentConfig
from lesionforge.segment.copypaste import CopyPaster
from lesionforge.segment.losses import MaskedDiceCELoss, mark_left_out, split_left_out, trusted_pixels
from lesionforge.segment.metrics import THRESHOLD, overlap_scores
from lesionforge.segment.mixing import (
    STREAM_AUGMENT,
    STREAM_COPY_PASTE,
    STREAM_MERGE,
    BatchPlan,
    BatchSampler,
    merge_mask,
    merge_pairs,
    step_rng,
)
from lesionforge.segment.model_io import predict, save_segmenter
from lesionforge.segment.networks import build_network
from lesionforge.segment.resident import DeviceBatches
from lesionforge.utils import seed_everything, write_json_atomic


@dataclass
class SegmentRun:
    """Outcome of :func:`train_segmenter`: best checkpoint folder, its validation mDice, and the history
    (one dict per validation: step, train loss, lr, val_mdice)."""

    best_checkpoint: Path
    best_val_mdice: float
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    images_per_s: float = float("nan")


@dataclass
class _State:
    step: int = 0  # optimizer steps done
    best_val_mdice: float = -1.0
    best_step: int = -1
    history: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0
    images_seen: int = 0
    pending_losses: list[float] = field(default_factory=list)  # since the last validation


def train_segmenter(
    cfg: SegmentConfig, train: PairArrays, val: PairArrays, out_dir: str | Path, *,
    synthetic: PairArrays | None = None, twins: dict[str, list[int]] | None = None, resume: bool = True,
    overwrite: bool = False, stop_after: int | None = None, progress: bool = False, resident: bool | None = None,
    left_out: np.ndarray | None = None, paste_donors: np.ndarray | None = None,
) -> SegmentRun:
    """Train a segmenter on ``train`` (+ ``synthetic`` per ``cfg.mixing``); select on ``val`` mDice.

    Arrays are uint8 at ``cfg.resolution`` (images (N, H, W, C), masks (N, H, W) in {0, 1}). ``twins`` maps a
    real id to indices of its synthetic twins in ``synthetic`` (patch merging). With ``resume`` a run in
    ``out_dir`` continues exactly where it stopped; ``stop_after`` ends the call after that many steps (the
    state is saved, a later call continues). ``resident``: hold the training data on the device and assemble and
    augment the batches there (default: on CUDA, see :func:`~lesionforge.devices.data_on_device`). ``left_out``:
    bool (N synthetic, H, W), the synthetic pixels the loss leaves out (``cfg.mixing.synthetic_pixel_filter``'s,
    :func:`lesionforge.validate.pixel_trust.untrusted_pixels`). ``paste_donors``: indices of the ``synthetic``
    pairs whose lesions copy-paste may take (``cfg.copy_paste.synthetic_donors``; default: every one with a
    lesion). Returns the best checkpoint, which :func:`load_segmenter` reads.
    """
    # image-only samples (has_mask False) have no ground truth: neither trained on as lesion-free nor scored
    train, val = (a.subset(np.flatnonzero(a.has_mask)) for a in (train, val))
    _check_inputs(cfg, train, val, synthetic)
    extra = _synthetic_donors(cfg, synthetic, paste_donors)
    _check_left_out(cfg, synthetic, left_out)
    out = claim_output(out_dir, "segmentation run", overwrite=overwrite, resume=resume)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    channels = train.images.shape[-1]
    model = build_network(cfg.network, channels, cfg.features, cfg.resolution, **cfg.network_kwargs).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    state = _load_last(out, cfg, model, opt, sched) if resume else _State()
    save_config(cfg, out / "config.yaml")
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    loop = _Loop(cfg, model, train, synthetic, twins, device, data_on_device(device, resident), left_out, extra)
    bar = _progress(progress, state.step, end)
    while state.step < end:
        t0 = time.perf_counter()
        loss, n_images = loop.step(opt, state.step)
        sched.step()
        state.train_time_s += time.perf_counter() - t0
        state.images_seen += n_images
        state.step += 1
        state.pending_losses.append(loss)
        if bar is not None:
            bar[0].update(bar[1], completed=state.step, description=f"segment loss {loss:.3f}")
        if state.step % cfg.val_interval == 0 or state.step == cfg.steps:
            _validate(cfg, model, val, channels, state, sched.get_last_lr()[0], out)
            _save_last(out, cfg, model, opt, sched, state, channels)
    if bar is not None:
        bar[0].stop()
    last = _last_folder(out)
    if last is None or last.name != _last_name(state.step):  # stopped between validations: save for resume
        _save_last(out, cfg, model, opt, sched, state, channels)
    return _finish(out, state, cfg)


def _check_inputs(cfg: SegmentConfig, train: PairArrays, val: PairArrays, synthetic: PairArrays | None) -> None:
    sets = {"train": train, "val": val, **({"synthetic": synthetic} if synthetic is not None else {})}
    for name, a in sets.items():
        if len(a) == 0:
            raise DataError(name, "no samples")
        if a.images.shape[1:3] != (cfg.resolution, cfg.resolution):
            raise DataError(name, f"images are {a.images.shape[1:3]}, config resolution is {cfg.resolution}")
        if a.images.shape[-1] != train.images.shape[-1]:
            raise DataError(name, f"{a.images.shape[-1]} channels, train has {train.images.shape[-1]}")
    if cfg.mixing.mode != "none" and synthetic is None:
        raise ConfigError(f"mixing mode {cfg.mixing.mode!r} needs a synthetic set")


def _synthetic_donors(cfg: SegmentConfig, synthetic: PairArrays | None, pick: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """The synthetic (images, binary masks) copy-paste takes ``cfg.copy_paste.synthetic_donors`` of its lesions
    from; None when it takes none."""
    if not (cfg.copy_paste.enabled and (cfg.copy_paste.synthetic_donors or 0) > 0):
        return None
    if synthetic is None:
        raise ConfigError("copy_paste.synthetic_donors needs a synthetic set to take lesions from")
    idx = np.arange(len(synthetic)) if pick is None else np.asarray(pick, dtype=int)
    masks = (synthetic.masks[idx] > 0).astype(np.uint8)
    if not masks.reshape(len(masks), -1).any(axis=1).any():
        raise ConfigError("copy_paste.synthetic_donors: none of the synthetic pairs it may take from has a lesion")
    return synthetic.images[idx], masks


def _check_left_out(cfg: SegmentConfig, synthetic: PairArrays | None, left_out: np.ndarray | None) -> None:
    if (cfg.mixing.synthetic_pixel_filter is None) != (left_out is None):
        raise ConfigError("mixing.synthetic_pixel_filter and the pixels it leaves out go together: set both (the "
                          "experiment runner computes them from the set's validator) or neither")
    if left_out is not None and (synthetic is None or left_out.shape != synthetic.masks.shape):
        raise DataError("synthetic", f"the pixels to leave out are {left_out.shape}, the synthetic masks "
                                     f"{None if synthetic is None else synthetic.masks.shape}")


class _Loop:
    """One optimizer step: draw a batch, copy-paste, augment, forward (merging for patch-merge), update.

    The batch arrays come from ``batches``: :class:`_HostBatches` (numpy on the host, copied to the device each
    step) or :class:`DeviceBatches` (held on the device)."""

    def __init__(
        self, cfg: SegmentConfig, model: nn.Module, train: PairArrays, synthetic: PairArrays | None,
        twins: dict[str, list[int]] | None, device: torch.device, resident: bool = False,
        left_out: np.ndarray | None = None, donors: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.cfg, self.model, self.device = cfg, model, device
        n_syn = 0 if synthetic is None else len(synthetic)
        self.sampler = BatchSampler(cfg.mixing, train.ids, n_syn, cfg.batch_size, cfg.seed, twins, cfg.steps)
        if left_out is not None:  # the synthetic masks carry the pixels to leave out (segment/losses.py)
            synthetic = PairArrays(synthetic.images, mark_left_out(synthetic.masks, left_out), synthetic.has_mask,
                                   synthetic.ids, synthetic.classes)
        self.marked = left_out is not None
        batches = DeviceBatches if resident else _HostBatches
        self.batches = batches(cfg, train, synthetic, device, marked=self.marked, donors=donors)
        self.loss_fn = DiceCELoss(sigmoid=True, batch=True)
        self.border = cfg.mixing.synthetic_border_ignore or 0  # pixels of synthetic labels the loss leaves out
        self.masked_loss = MaskedDiceCELoss() if self.border or self.marked else None
        self.fast = gpu_fast_path(device)
        if self.fast:
            self.model.to(memory_format=torch.channels_last)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (float32); on a GPU through bf16 autocast in channels-last layout (see gpu_fast_path)."""
        if not self.fast:
            return self.model(x)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.model(x.contiguous(memory_format=torch.channels_last)).float()

    def step(self, opt: torch.optim.Optimizer, step: int) -> tuple[float, int]:
        """Run optimizer step ``step``; returns the loss and the number of images forwarded."""
        self.model.train()
        plan = self.sampler.plan(step)
        if self.cfg.mixing.mode == "patch-merge":
            loss, n = self._merged_loss(plan, step)
        else:
            images, masks = self.batches.real(plan.real, step)
            if len(plan.synthetic):
                images, masks = self.batches.with_synthetic(images, masks, plan.synthetic)
            x, y = self.batches.tensors(images, masks, step)
            if self.masked_loss is not None and len(plan.synthetic):
                counted = 1.0
                if self.marked:
                    y, counted = split_left_out(y)
                # the real samples come first in the batch, the synthetic ones after them
                w = trusted_pixels(y, len(x) - len(plan.synthetic), self.border) * counted
                loss, n = self.masked_loss(self._forward(x), y, w), len(x)
            else:
                loss, n = self.loss_fn(self._forward(x), y), len(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach()), n

    def _merged_loss(self, plan: BatchPlan, step: int) -> tuple[torch.Tensor, int]:
        real_img, real_mask = self.batches.real(plan.real, step)
        twin_img, twin_mask = self.batches.twins(real_img, real_mask, plan.twin)
        # the same augmentation seed gives each real sample and its twin the same geometric transform
        xr, yr = self.batches.tensors(real_img, real_mask, step)
        xs, ys = self.batches.tensors(twin_img, twin_mask, step)
        logits = self._forward(torch.cat([xr, xs]))
        m = merge_mask(len(xr), self.cfg.resolution, self.cfg.mixing.patch_size, self.cfg.mixing.alpha,
                       step_rng(self.cfg.seed, step, STREAM_MERGE)).to(self.device)
        merged_logits, merged_y = merge_pairs(logits[: len(xr)], logits[len(xr) :], yr, ys, m)
        return self.loss_fn(merged_logits, merged_y), 2 * len(xr)


class _HostBatches:
    """Batch arrays on the host (numpy): copy-paste and MONAI augmentation on the CPU, then a copy to ``device``."""

    def __init__(self, cfg: SegmentConfig, train: PairArrays, synthetic: PairArrays | None, device: torch.device,
                 marked: bool = False, donors: tuple[np.ndarray, np.ndarray] | None = None):
        # masks are made binary where they enter a batch (real ones after copy-paste, synthetic ones here), so
        # tensors() takes them as they are; ``marked`` synthetic masks carry left-out pixels (segment/losses.py)
        if synthetic is not None and not marked:
            synthetic = PairArrays(synthetic.images, (synthetic.masks > 0).astype(np.uint8), synthetic.has_mask,
                                   synthetic.ids, synthetic.classes)
        self.cfg, self.train, self.synthetic, self.device = cfg, train, synthetic, device
        self.augment = build_augmentation(cfg.augment, cfg.resolution) if cfg.augment.enabled else None
        self.paster = CopyPaster(train.images, train.masks, cfg.copy_paste, donors) if cfg.copy_paste.enabled else None

    def real(self, idx: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        images, masks = self.train.images[idx], self.train.masks[idx]
        if self.paster is not None and len(idx):
            images, masks = self.paster(images, masks, idx, step_rng(self.cfg.seed, step, STREAM_COPY_PASTE))
        return images, (masks > 0).astype(np.uint8)

    def with_synthetic(self, images: np.ndarray, masks: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([images, self.synthetic.images[idx]]),
                np.concatenate([masks, self.synthetic.masks[idx]]))

    def twins(self, images: np.ndarray, masks: np.ndarray, twin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        has_twin = twin >= 0
        twin_img, twin_mask = images.copy(), masks.copy()  # no twin: the real pair stands in for it
        twin_img[has_twin] = self.synthetic.images[twin[has_twin]]
        twin_mask[has_twin] = self.synthetic.masks[twin[has_twin]]
        return twin_img, twin_mask

    def tensors(self, images: np.ndarray, masks: np.ndarray, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = image_to_tensor(images), mask_to_tensor(masks)
        if self.augment is not None:
            seed = int(step_rng(self.cfg.seed, step, STREAM_AUGMENT).integers(2**31))
            x, y = augment_batch(self.augment, x, y, seed)
        return x.to(self.device), y.to(self.device)


def gpu_fast_path(device: torch.device) -> bool:
    """Train in bf16 autocast with channels-last tensors: on CUDA GPUs with bf16 (the tensor cores' fast path;
    bf16 keeps fp32's range, so no loss scaling). CPU training stays in fp32, bit for bit as before."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def val_mdice(model: nn.Module, val: PairArrays, batch_size: int = 32) -> float:
    """Mean per-image foreground Dice of ``model`` on ``val`` (threshold 0.5; empty-vs-empty scores 1)."""
    prob = predict(model, val.images, batch_size)
    return float(overlap_scores((prob[:, 0] >= THRESHOLD).numpy(), val.masks > 0)["dice"].mean())


def _validate(
    cfg: SegmentConfig, model: nn.Module, val: PairArrays, channels: int, state: _State, lr: float, out: Path
) -> None:
    score = val_mdice(model, val, cfg.eval_batch_size)
    state.history.append({"step": state.step, "loss": _mean(state.pending_losses), "lr": lr, "val_mdice": score})
    state.pending_losses = []
    if score > state.best_val_mdice:
        state.best_val_mdice, state.best_step = score, state.step
        save_segmenter(model, cfg, channels, out / "best", step=state.step, val_mdice=score)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _save_last(
    out: Path, cfg: SegmentConfig, model: nn.Module, opt: torch.optim.Optimizer, sched: LRScheduler,
    state: _State, channels: int,
) -> None:
    folder = out / _last_name(state.step)
    save_segmenter(model, cfg, channels, folder, step=state.step)
    blob = {
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
        "state": state.__dict__,
    }
    save_torch_state(blob, folder / "state.pt")
    previous = _last_folder(out)
    write_json_atomic(out / "last.json", {"folder": folder.name, "step": state.step})
    if previous is not None and previous != folder:
        shutil.rmtree(previous, ignore_errors=True)


def _last_name(step: int) -> str:
    return f"last-{step:07d}"


def _last_pointer(out: Path) -> dict | None:
    """``out/last.json`` (the latest state's folder and step), None when absent."""
    pointer = Path(out) / "last.json"
    return json.loads(pointer.read_text(encoding="utf-8")) if pointer.is_file() else None


def resumable_step(out: Path) -> int | None:
    """The step an unfinished training in ``out`` resumes from (its ``last.json``), None when it has none."""
    try:
        step = (_last_pointer(out) or {}).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def _last_folder(out: Path) -> Path | None:
    """The folder ``last.json`` names: a ``last-<step>`` child of ``out`` (it is replaced and deleted later,
    so a crafted pointer must not reach anything else)."""
    pointer = out / "last.json"
    last = _last_pointer(out)
    if last is None:
        return None
    name = last.get("folder")
    folder = child_path(out, name if isinstance(name, str) else "", pointer)
    if folder.parent != out or not name.startswith("last-"):
        raise CheckpointError(f"{pointer}: names {name!r}, not a last-<step> folder of {out}; the state file is "
                              "damaged or was edited: use a new output folder")
    return folder


def _load_last(
    out: Path, cfg: SegmentConfig, model: nn.Module, opt: torch.optim.Optimizer, sched: LRScheduler
) -> _State:
    folder = _last_folder(out)
    if folder is None:
        return _State()
    saved = SegmentConfig.model_validate(json.loads((folder / "segmenter.json").read_text(encoding="utf-8"))["config"])
    if saved.model_copy(update={"device": cfg.device}) != cfg:  # the same run may resume on another device
        raise CheckpointError(f"{out}: holds a run with different settings; use another folder or --overwrite")
    load_weights(model, folder / WEIGHTS)
    blob = load_torch_state(folder / "state.pt")
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    state = _State(**blob["state"])
    announce_resume(out, f"step {state.step} of {cfg.steps} ({folder.name})")
    return state


def _finish(out: Path, state: _State, cfg: SegmentConfig) -> SegmentRun:
    ips = state.images_seen / state.train_time_s if state.train_time_s > 0 else float("nan")
    run = SegmentRun(out / "best", state.best_val_mdice, state.history, state.step, ips)
    if state.step >= cfg.steps:
        write_json_atomic(out / "run.json", {
            "best_checkpoint": str(run.best_checkpoint), "best_val_mdice": run.best_val_mdice,
            "best_step": state.best_step, "steps": state.step, "train_images_per_s": ips,
            "train_time_s": state.train_time_s, "history": state.history,
        })
    return run


def _progress(enabled: bool, start: int, end: int):
    if not enabled:
        return None
    from lesionforge.progress import StageProgress

    bar = StageProgress()
    task = bar.add_task("segment", total=end, completed=start)
    bar.start()
    return bar, task
