"""Cache keys: short stable hashes of settings and data ids that name cached models and synthetic sets."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def cache_key(*parts: Any) -> str:
    """Short stable hash of JSON-serialisable parts (config dicts, id lists, preset file contents)."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
