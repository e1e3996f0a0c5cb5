"""Exact and perceptual image hashes, and near-duplicate groups built from them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lesionforge.data.io import read_image
from lesionforge.data.manifest import Sample

#: Hamming distance (of 256 bits) at or below which two perceptual hashes count as near-duplicates. Measured on
#: the shared data: true BUSI twins lie at <= 40, Kvasir frames that merely share the black endoscope border at
#: >= 42, and random pairs at >= 62 (0.1 % quantile); the 64-bit hash could not separate the Kvasir borders.
NEAR_DUPLICATE_DISTANCE = 36
HASH_SIZE = 16  # 16x16 = 256-bit DCT hash
_HASH_INPUT_SIDE = 128  # phash reads a (4 * HASH_SIZE)^2 grey image; decoding bigger is wasted work


def pixel_digest(image: np.ndarray) -> str:
    """SHA-1 of the decoded pixels and shape: equal for exact duplicates whatever the file format."""
    h = hashlib.sha1(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def perceptual_hash(image: np.ndarray) -> str:
    """256-bit DCT perceptual hash (ImageHash ``phash``) of a uint8 ``(H, W, C)`` image, as 64 hex digits.

    The image is first shrunk to 128 px with area interpolation: phash itself works on 64x64, so this costs
    little and changes nothing that matters.
    """
    grey = image[..., 0] if image.shape[-1] == 1 else cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (_HASH_INPUT_SIDE, _HASH_INPUT_SIDE), interpolation=cv2.INTER_AREA)
    return str(imagehash.phash(Image.fromarray(small), hash_size=HASH_SIZE))


def hash_bits(hashes: list[str]) -> np.ndarray:
    """Hex hashes -> bool array (N, bits)."""
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
    groups = connected_groups(ids, np.concatenate(rows), np.concatenate(cols))
    return sorted((sorted(g) for g in groups if len(g) > 1), key=lambda g: g[0])


def connected_groups(ids: list[str], rows: np.ndarray, cols: np.ndarray) -> list[list[str]]:
    """Partition ``ids`` into groups linked, transitively, by the index pairs ``(rows[k], cols[k])``; every id
    lands in exactly one group (singletons included), ids in their given order."""
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(len(ids), len(ids)))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[str]] = {}
    for i, lab in zip(ids, labels, strict=True):
        groups.setdefault(int(lab), []).append(i)
    return list(groups.values())


def exact_duplicate_groups(ids: list[str], digests: list[str]) -> list[list[str]]:
    """Groups (size >= 2) of ids with identical pixel digests."""
    by_digest: dict[str, list[str]] = {}
    for i, d in zip(ids, digests, strict=True):
        by_digest.setdefault(d, []).append(i)
    return sorted((sorted(g) for g in by_digest.values() if len(g) > 1), key=lambda g: g[0])


def hash_samples(
    samples: Sequence[Sample], workers: int = 2, progress: Callable[[int, int], None] | None = None
) -> list[str]:
    """Perceptual hash of each sample's image (``workers`` decoding threads), in sample order."""

    def one(sample: Sample) -> str:
        if sample.slice is not None:
            from lesionforge.data.volumes import read_slice

            return perceptual_hash(read_slice(sample)[0])
        return perceptual_hash(read_image(sample.image))

    out = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for n, h in enumerate(pool.map(one, samples), 1):
            out.append(h)
            if progress:
                progress(n, len(samples))
    return out
