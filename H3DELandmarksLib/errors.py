"""Typed exceptions for errors a user can cause.

Every message is one clear sentence meant for the user; the command line prints it and exits
with a non-zero status instead of showing a traceback.
"""


class H3DEError(Exception):
    """Base class of every error caused by user input (files, models, options)."""


class VolumeError(H3DEError):
    """A volume file or folder is missing, unreadable or not a valid 3D scalar volume."""


class LandmarkFileError(H3DEError):
    """A landmark file is missing, malformed or inconsistent."""


class ModelPackageError(H3DEError):
    """A model package or its manifest is missing, invalid or incompatible."""


class CheckpointError(H3DEError):
    """A published checkpoint cannot be imported (missing key, wrong shape, unsafe content)."""


class DownloadError(H3DEError):
    """A model download failed (network, HTTP status, truncated transfer, checksum)."""


class DetectionCancelled(H3DEError):
    """Landmark detection was cancelled by the user before it finished."""
