"""Classical lesion copy-paste, the strong non-diffusion baseline.

A lesion (one 8-connected component of a training mask) is cut from one image with its mask, scaled, rotated
and flipped at random, blended with a feathered (Gaussian-softened) edge onto another training image at a
place where all its pixels fall inside that image's field of view, and the target mask becomes the union.
With ``synthetic_donors`` a share of the lesions comes from synthetic pairs instead (a generated lesion cut with
its mask, pasted onto a real image): the generator's lesions as more donors.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from lesionforge.segment.config import CopyPasteConfig

_EIGHT = np.ones((3, 3), dtype=bool)
_TRIES = 10  # placements tried before giving up on a paste


def field_of_view(image: np.ndarray, threshold: int) -> np.ndarray:
    """bool (H, W): pixels brighter than ``threshold`` in any channel (endoscopy frames have a black border)."""
    return image.max(axis=-1) > threshold


def transformed_lesion(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, scale: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one random lesion of ``mask`` from ``image`` (uint8 (H, W, C)) and warp it.

    Returns the warped patch float32 (D, D, C) and its hard mask bool (D, D), lesion centred."""
    labels, n = ndimage.label(mask > 0, structure=_EIGHT)
    comp = labels == rng.integers(1, n + 1)
    ys, xs = np.nonzero(comp)
    cy, cx = ys.mean(), xs.mean()
    s = rng.uniform(*scale)
    radius = np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2).max() + 1.5
    side = int(np.ceil(2 * radius * s)) + 3
    rot = cv2.getRotationMatrix2D((float(cx), float(cy)), float(rng.uniform(0, 360)), float(s))
    rot[:, 2] += side / 2 - np.array([cx, cy])  # move the lesion centre to the patch centre
    if rng.random() < 0.5:  # horizontal flip about the patch centre
        rot = np.array([[-1, 0, side - 1], [0, 1, 0]]) @ np.vstack([rot, [0, 0, 1]])
    img = image.astype(np.float32)
    patch = cv2.warpAffine(img, rot, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    soft = cv2.warpAffine(comp.astype(np.float32), rot, (side, side), flags=cv2.INTER_LINEAR)
    return patch.reshape(side, side, -1), soft >= 0.5


def paste_lesion(
    dst_image: np.ndarray, dst_mask: np.ndarray, patch: np.ndarray, hard: np.ndarray, rng: np.random.Generator,
    fov_threshold: int = 12, feather_sigma: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Paste a warped lesion (``patch`` float (D, D, C), ``hard`` bool (D, D)) onto ``dst_image`` uint8 (H, W, C).

    The lesion lands where every lesion pixel is inside the image and its field of view. Returns the new image,
    the new mask (union, uint8 (H, W)) and whether a paste happened (False: no valid place found)."""
    h, w = dst_mask.shape
    fov = field_of_view(dst_image, fov_threshold)
    ly, lx = np.nonzero(hard)
    if len(ly) == 0 or not fov.any():
        return dst_image, dst_mask, False
    fy, fx = np.nonzero(fov)
    side = hard.shape[0]
    for _ in range(_TRIES):
        k = rng.integers(len(fy))
        oy, ox = fy[k] - side // 2, fx[k] - side // 2  # patch centre on a random field-of-view pixel
        ty, tx = ly + oy, lx + ox
        if ty.min() < 0 or tx.min() < 0 or ty.max() >= h or tx.max() >= w or not fov[ty, tx].all():
            continue
        return (*_blend(dst_image, dst_mask, patch, hard, oy, ox, feather_sigma), True)
    return dst_image, dst_mask, False


def _blend(dst_image, dst_mask, patch, hard, oy: int, ox: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = dst_mask.shape
    side = hard.shape[0]
    alpha = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), sigma) if sigma > 0 else hard.astype(np.float32)
    # the part of the patch canvas that lies inside the image
    y0, x0, y1, x1 = max(oy, 0), max(ox, 0), min(oy + side, h), min(ox + side, w)
    py, px = slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox)
    out = dst_image.astype(np.float32)
    a = alpha[py, px, None]
    out[y0:y1, x0:x1] = out[y0:y1, x0:x1] * (1 - a) + patch[py, px] * a
    mask = dst_mask.copy()
    mask[y0:y1, x0:x1] |= hard[py, px].astype(mask.dtype)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask


def donor_pool(images: np.ndarray, masks: np.ndarray, extra: tuple[np.ndarray, np.ndarray] | None
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """The lesion donors' images and masks: the training pairs, then the ``extra`` (synthetic) ones; and how many
    of them are training pairs (a sample's index in the batch source is its index here)."""
    if extra is None or len(extra[0]) == 0:
        return images, masks, len(images)
    return np.concatenate([images, extra[0]]), np.concatenate([masks, extra[1]]), len(images)


def pick_donor(real: np.ndarray, synthetic: np.ndarray, own: int, share: float, rng: np.random.Generator,
               prob: float) -> int | None:
    """The donor of one paste, or None for no paste: with probability ``prob`` a paste happens; its lesion comes
    from a ``synthetic`` donor with probability ``share``, else from a ``real`` one other than ``own``.

    Written by hand (no library draws copy-paste donors); with ``share`` 0 or no synthetic donors it makes the
    draws of the classical recipe, number for number, so real-donor runs are unchanged."""
    real = real[real != own]
    use_synthetic = len(synthetic) > 0 and share > 0
    if (len(real) == 0 and not use_synthetic) or rng.random() >= prob:
        return None
    if use_synthetic and (len(real) == 0 or rng.random() < share):
        return int(rng.choice(synthetic))
    return int(rng.choice(real))


class CopyPaster:
    """Applies copy-paste to batches drawn from one set of training pairs (the lesion donors).

    ``images`` uint8 (N, H, W, C), ``masks`` uint8 (N, H, W); ``extra``: synthetic (images, masks) whose lesions
    are pasted in ``cfg.synthetic_donors`` of the pastes."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, cfg: CopyPasteConfig,
                 extra: tuple[np.ndarray, np.ndarray] | None = None):
        self.cfg = cfg
        self.images, self.masks, n_real = donor_pool(images, masks, extra)
        lesion = self.masks.reshape(len(self.masks), -1).any(axis=1)
        self.donors = np.flatnonzero(lesion[:n_real])
        self.synthetic = n_real + np.flatnonzero(lesion[n_real:])

    def __call__(
        self, images: np.ndarray, masks: np.ndarray, index: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Copy-paste onto each sample of a batch with probability ``cfg.prob``; ``index`` are the samples'
        positions in the donor set (a sample never receives its own lesion). Returns new arrays."""
        images, masks = images.copy(), masks.copy()
        for b, i in enumerate(index):
            d = pick_donor(self.donors, self.synthetic, i, self.cfg.synthetic_donors or 0.0, rng, self.cfg.prob)
            if d is None:
                continue
            patch, hard = transformed_lesion(self.images[d], self.masks[d], rng, self.cfg.scale)
            images[b], masks[b], _ = paste_lesion(
                images[b], masks[b], patch, hard, rng, self.cfg.fov_threshold, self.cfg.feather_sigma
            )
        return images, masks


class DeviceCopyPaster:
    """:class:`CopyPaster` on tensors held on a device (a GPU): the same recipe (a random lesion of another
    training pair, zoomed by U(``scale``), turned by U(0, 360)°, flipped with p 0.5, pasted with a feathered edge
    where all of it falls inside the image and its field of view, up to 10 places tried, the mask the union),
    batched: one warp of every pasted lesion (``grid_sample``), every try checked at once. The lesions are found
    once, on the host (scipy), when the data go to the device. Not bit-equal to the CPU version (different
    resampling code and draw order); the scalar draws come from the numpy ``rng`` (a few numbers a sample).

    ``images`` uint8 (N, H, W, C), ``masks`` uint8 (N, H, W) on the host; they are copied to ``device`` once
    unless ``on_device`` already holds them there (as (images, masks) uint8 tensors). ``extra``: synthetic
    (images, masks) on the host whose lesions are pasted in ``cfg.synthetic_donors`` of the pastes."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, cfg: CopyPasteConfig, device,
                 on_device: tuple | None = None, extra: tuple[np.ndarray, np.ndarray] | None = None):
        import torch

        self.cfg, self.device = cfg, device
        self.images = on_device[0] if on_device is not None else torch.from_numpy(images).to(device)
        n_real = len(images)
        if extra is not None and len(extra[0]):  # the synthetic donors after the training pairs
            self.images = torch.cat([self.images, torch.from_numpy(np.ascontiguousarray(extra[0])).to(device)])
        _, masks, _ = donor_pool(images, masks, extra)
        labels = np.zeros(masks.shape, np.int16)
        lesions = []  # per lesion: donor, label, centre y, centre x, radius
        for i, m in enumerate(masks):
            labels[i], n = ndimage.label(m > 0, structure=_EIGHT)
            for k in range(1, n + 1):
                ys, xs = np.nonzero(labels[i] == k)
                cy, cx = ys.mean(), xs.mean()
                lesions.append((i, k, cy, cx, np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2).max() + 1.5))
        self.labels = torch.from_numpy(labels).to(device)
        self.lesions = np.array(lesions, np.float64).reshape(-1, 5)
        donors = np.unique(self.lesions[:, 0]).astype(np.int64)
        self.donors, self.synthetic = donors[donors < n_real], donors[donors >= n_real]
        self.feather = None
        if cfg.feather_sigma > 0:
            from monai.networks.layers import GaussianFilter

            self.feather = GaussianFilter(2, cfg.feather_sigma).to(device)

    def __call__(self, images, masks, index: np.ndarray, rng: np.random.Generator):
        """Copy-paste onto each sample of a batch (uint8 tensors (B, H, W, C) and (B, H, W) on the device) with
        probability ``cfg.prob``; ``index``: the samples' positions in the donor set. Returns new tensors."""
        import torch

        rows, picks = [], []
        for b, i in enumerate(index):
            d = pick_donor(self.donors, self.synthetic, i, self.cfg.synthetic_donors or 0.0, rng, self.cfg.prob)
            if d is None:
                continue
            own = np.flatnonzero(self.lesions[:, 0] == d)
            lesion = own[rng.integers(len(own))]
            picks.append((lesion, rng.uniform(*self.cfg.scale), rng.uniform(0, 2 * np.pi), rng.random() < 0.5,
                          *rng.random(_TRIES)))
            rows.append(b)
        if not rows:
            return images, masks
        rows_t = torch.as_tensor(rows, device=self.device)
        new_img, new_mask = self._paste(images[rows_t], masks[rows_t], np.array(picks, np.float64))
        images, masks = images.clone(), masks.clone()
        images[rows_t], masks[rows_t] = new_img, new_mask
        return images, masks

    def _paste(self, dst, dst_mask, picks: np.ndarray):
        import torch
        import torch.nn.functional as F

        dev, (p, h, w, c) = self.device, dst.shape
        lesion = self.lesions[picks[:, 0].astype(np.int64)]
        side = int(np.ceil(2 * lesion[:, 4] * picks[:, 1]).max()) + 3  # one canvas holds every warped lesion
        donor = torch.as_tensor(lesion[:, 0].astype(np.int64), device=dev)
        label = torch.as_tensor(lesion[:, 1].astype(np.int16), device=dev)
        par = torch.as_tensor(np.column_stack([lesion[:, 2:4], picks[:, 1:4]]), dtype=torch.float32, device=dev)
        cy, cx, scale, angle, flip = par.unbind(1)
        # canvas pixel q (from the canvas centre, flipped first) reads the donor at centre + R(-angle) q / scale
        q = torch.arange(side, device=dev, dtype=torch.float32) - side / 2
        qy, qx = q[None, :, None].expand(p, side, side), q[None, None, :].expand(p, side, side)
        qx = torch.where(flip[:, None, None] > 0, -qx - 1, qx)
        cos, sin = (torch.cos(angle) / scale)[:, None, None], (torch.sin(angle) / scale)[:, None, None]
        sx, sy = cx[:, None, None] + cos * qx + sin * qy, cy[:, None, None] - sin * qx + cos * qy
        grid = torch.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], dim=-1)  # align_corners=True
        patch = F.grid_sample(self.images[donor].permute(0, 3, 1, 2).float(), grid, mode="bilinear",
                              padding_mode="reflection", align_corners=True)
        comp = (self.labels[donor] == label[:, None, None]).float()[:, None]
        hard = F.grid_sample(comp, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0] >= 0.5
        oy, ox, placed = self._place(dst, hard, torch.as_tensor(picks[:, 4:], dtype=torch.float32, device=dev))
        alpha = hard.float()[:, None] if self.feather is None else self.feather(hard.float()[:, None])
        # the canvas into a zero frame of the destination, side pixels of margin each way, at its place
        pad = torch.zeros(p, h + 2 * side, w + 2 * side, c + 2, device=dev)
        ar = torch.arange(side, device=dev)
        ri, ci = (oy + side)[:, None, None] + ar[None, :, None], (ox + side)[:, None, None] + ar[None, None, :]
        canvas = torch.cat([patch, alpha, hard.float()[:, None]], 1).permute(0, 2, 3, 1)
        pad[torch.arange(p, device=dev)[:, None, None], ri, ci] = canvas * placed[:, None, None, None]
        pad = pad[:, side:side + h, side:side + w]
        a = pad[..., c:c + 1]
        out = dst.float() * (1 - a) + pad[..., :c] * a
        return (out + 0.5).clamp(0, 255).to(torch.uint8), dst_mask | (pad[..., c + 1] > 0).to(dst_mask.dtype)

    def _place(self, dst, hard, tries):
        """Per sample the first of the tries (uniform positions among the field-of-view pixels, the lesion
        centred there) where every lesion pixel is inside the image and its field of view: (top, left, found)."""
        import torch
        import torch.nn.functional as F

        p, h, w, _ = dst.shape
        side, dev = hard.shape[-1], dst.device
        fov = dst.amax(-1) > self.cfg.fov_threshold
        count = fov.flatten(1).sum(1)
        kth = (tries * count[:, None]).long().clamp(max=(count - 1).clamp(min=0)[:, None])
        flat = torch.searchsorted(fov.flatten(1).cumsum(1), kth + 1)  # the kth field-of-view pixel
        oy, ox = flat // w - side // 2, flat % w - side // 2
        padded = F.pad(fov, (side, side, side, side))  # outside the image counts as outside the view
        ar = torch.arange(side, device=dev)
        ri = (oy + side)[..., None, None] + ar[None, None, :, None]
        ci = (ox + side)[..., None, None] + ar[None, None, None, :]
        window = padded[torch.arange(p, device=dev)[:, None, None, None], ri, ci]  # (P, tries, side, side)
        ok = ~(hard[:, None] & ~window).flatten(2).any(2) & (count > 0)[:, None] & hard.flatten(1).any(1)[:, None]
        first = ok.int().argmax(1)
        pick = torch.arange(p, device=dev)
        return oy[pick, first], ox[pick, first], ok.any(1)
