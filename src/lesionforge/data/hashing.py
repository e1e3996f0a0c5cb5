"""Exact and perceptual image hashes, and near-duplicate groups built from them."""

from __future__ import annotations

import hashlib

import cv2
import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: Hamming distance (of 64 bits) at or below which two perceptual hashes count as near-duplicates.
NEAR_DUPLICATE_DISTANCE = 6
_HASH_INPUT_SIDE = 64  # phash reads a 32x32 grey image; decoding bigger is wasted work


def pixel_digest(image: np.ndarray) -> str:
    """SHA-1 of the decoded pixels and shape: equal for exact duplicates whatever the file format."""
    h = hashlib.sha1(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def perceptual_hash(image: np.ndarray) -> str:
    """64-bit DCT perceptual hash (ImageHash ``phash``) of a uint8 ``(H, W, C)`` image, as 16 hex digits.

    The image is first shrunk to 64 px with area interpolation, which costs little and changes no hash bit
    that matters (phash itself works on 32x32).
    """
    grey = image[..., 0] if image.shape[-1] == 1 else cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (_HASH_INPUT_SIDE, _HASH_INPUT_SIDE), interpolation=cv2.INTER_AREA)
    return str(imagehash.phash(Image.fromarray(small)))


def hash_bits(hashes: list[str]) -> np.ndarray:
    """Hex hashes -> bool array (N, 64)."""
    raw = np.array([np.frombuffer(bytes.fromhex(h), np.uint8) for h in hashes]).reshape(len(hashes), -1)
    return np.unpackbits(raw, axis=1).astype(bool)


def near_duplicate_groups(
    ids: list[str], hashes: list[str], max_distance: int = NEAR_DUPLICATE_DISTANCE, chunk: int = 1024
) -> list[list[str]]:
    """Groups (size >= 2) of ids whose hashes are within ``max_distance`` bits, linked transitively.

    Returns groups sorted by their first id, ids sorted inside each group.
    """
    if len(ids) != len(hashes):
        raise ValueError("ids and hashes differ in length")
    if len(ids) < 2:
        return []
    bits = hash_bits(hashes).astype(np.int16)
    rows, cols = [], []
    for start in range(0, len(ids), chunk):  # chunks keep the (N, N) distance matrix small for big datasets
        block = bits[start : start + chunk]
        dist = block @ (1 - bits).T + (1 - block) @ bits.T
        r, c = np.nonzero(dist <= max_distance)
        rows.append(r + start)
        cols.append(c)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(len(ids), len(ids)))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[str]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(int(lab), []).append(ids[i])
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def exact_duplicate_groups(ids: list[str], digests: list[str]) -> list[list[str]]:
    """Groups (size >= 2) of ids with identical pixel digests."""
    by_digest: dict[str, list[str]] = {}
    for i, d in zip(ids, digests, strict=True):
        by_digest.setdefault(d, []).append(i)
    return sorted((sorted(g) for g in by_digest.values() if len(g) > 1), key=lambda g: g[0])
