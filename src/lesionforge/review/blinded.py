"""The blinded real-or-synthetic test: real and synthetic images in one seeded random order, each shown by an
opaque token only, every rater's calls (real / synthetic, optional mask score 1-5) kept in
``<set>/review/blinded-seed<seed>.json`` (rewritten atomically at each call, under a lock)."""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from lesionforge.data.manifest import Sample
from lesionforge.errors import DataError
from lesionforge.review.stats import rater_summary
from lesionforge.review.store import ReviewSet, file_lock
from lesionforge.utils import write_json_atomic

CALLS = ("real", "synthetic")


@dataclass
class BlindItem:
    key: str  # "<origin>:<sample id>": stored in the ratings file, never sent to the page
    origin: str
    sample: Sample
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))


@dataclass
class BlindedSession:
    items: list[BlindItem]
    path: Path  # the ratings file
    seed: int
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, rs: ReviewSet, n_per_origin: int = 20, seed: int = 0) -> BlindedSession:
        """As many real (from the real manifest) as synthetic samples, at most ``n_per_origin`` each (equal
        numbers: chance accuracy is then 0.5), chosen and shuffled with ``seed`` (the same seed gives the same
        items in the same order, so a rater can resume)."""
        if not rs.real or not rs.synthetic:
            raise DataError(rs.root, "the blinded test needs real images (pass the real manifest, --real) and "
                                     "synthetic ones")
        rng = np.random.default_rng(seed)
        k = min(n_per_origin, len(rs.real), len(rs.synthetic))
        items = []
        for origin, pool in (("real", rs.real), ("synthetic", rs.synthetic)):
            pick = rng.choice(len(pool), size=k, replace=False)
            items += [BlindItem(f"{origin}:{pool[i].id}", origin, pool[i]) for i in sorted(pick)]
        order = rng.permutation(len(items))
        return cls([items[i] for i in order], rs.root / "review" / f"blinded-seed{seed}.json", seed)

    def item(self, token: str) -> BlindItem | None:
        return next((it for it in self.items if secrets.compare_digest(it.token, token)), None)

    def load(self) -> dict:
        if not self.path.is_file():
            return {"seed": self.seed, "items": [it.key for it in self.items], "ratings": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            data["ratings"]  # noqa: B018 - a file without it is not a ratings file
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(self.path, f"not a blinded-test ratings file: {e}") from e
        return data

    def listing(self, rater: str) -> list[dict]:
        """What the page gets: tokens in order with this rater's own calls; no id, origin or path."""
        mine = self.load()["ratings"].get(rater, {})
        return [{"token": it.token, "call": mine.get(it.key, {}).get("call"),
                 "mask": mine.get(it.key, {}).get("mask")} for it in self.items]

    def rate(self, rater: str, token: str, call: str, mask: int | None = None) -> None:
        if call not in CALLS:
            raise ValueError(f"call must be one of {CALLS}, got {call!r}")
        if mask is not None and not 1 <= mask <= 5:
            raise ValueError(f"mask score must be 1-5, got {mask!r}")
        it = self.item(token)
        if it is None:
            raise KeyError(token)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path.with_name(f".{self.path.name}.lock"), self._lock):
            data = self.load()
            entry = {"call": call, "at": datetime.now(UTC).isoformat(timespec="seconds")}
            if mask is not None:
                entry["mask"] = mask
            data["ratings"].setdefault(rater, {})[it.key] = entry
            write_json_atomic(self.path, data)

    def summary(self) -> dict:
        """Accuracy (Wilson 95 % CI) per rater, Cohen's kappa per pair, Fleiss' kappa for three or more."""
        ratings = self.load()["ratings"]
        truth = {it.key: it.origin for it in self.items}
        calls = {r: {k: v["call"] for k, v in rs.items() if k in truth} for r, rs in ratings.items()}
        masks = {r: {k: v["mask"] for k, v in rs.items() if k in truth and "mask" in v} for r, rs in ratings.items()}
        return {**rater_summary(truth, calls, masks), "n_real": sum(it.origin == "real" for it in self.items),
                "n_synthetic": sum(it.origin == "synthetic" for it in self.items)}
