"""Exception classes. Every data problem has its own class and names the offending file."""

from __future__ import annotations

from pathlib import Path


class LesionforgeError(Exception):
    """Base class of every error lesionforge raises on purpose."""


class DataError(LesionforgeError):
    """A problem with a user's data file. ``path`` is the file at fault."""

    kind = "data"

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class MissingMaskError(DataError):
    kind = "missing_mask"


class OrphanMaskError(DataError):
    kind = "orphan_mask"


class SizeMismatchError(DataError):
    kind = "size_mismatch"


class CorruptFileError(DataError):
    kind = "corrupt_file"


class ChannelCountError(DataError):
    kind = "channel_count"


class NonBinaryMaskError(DataError):
    kind = "non_binary_mask"


class DuplicateIdError(DataError):
    kind = "duplicate_id"


class ConfigError(LesionforgeError):
    """A configuration file or option is invalid."""


class CheckpointError(LesionforgeError):
    """A checkpoint folder is missing, incomplete or does not match the requested model."""


class OverwriteError(LesionforgeError):
    """An output exists and the user did not ask to overwrite it."""


class PromptFileError(DataError):
    """A prompt library or user prompt file (YAML/CSV) is malformed."""

    kind = "prompt_file"


class MissingDependencyError(LesionforgeError):
    """An optional package needed for this input (e.g. SimpleITK for DICOM) is not installed."""


class WaitTimeoutError(LesionforgeError):
    """A sweep worker waited longer than its timeout for runs that other workers hold."""
