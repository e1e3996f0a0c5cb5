"""Data stage: readers, input checks, manifest, fingerprint, splits, preprocessing, demo data."""

from lesionforge.data.manifest import Sample, read_manifest, write_manifest

__all__ = ["Sample", "read_manifest", "write_manifest"]
