"""Typed, one-line errors for user mistakes; `cli.py` prints the line and exits with code 2."""

from __future__ import annotations


class T2Error(Exception):
    """Base of every error a user can cause; its message is one line naming what is wrong."""


class ConfigError(T2Error):
    """A bad config key, value or flag."""


class ModelError(T2Error):
    """A model that cannot be found or loaded."""


class DataError(T2Error):
    """Bad input data: the message names the file and line."""


class CacheError(T2Error):
    """A missing or inconsistent SVD cache."""


class ExpertError(T2Error):
    """A missing, malformed or mismatched expert."""


class RegistryError(T2Error):
    """An unknown or duplicate registry name."""


class ResourceError(T2Error):
    """Not enough memory (or another resource) even after backing off."""


class ExportError(T2Error):
    """An export that cannot be written or pushed (folder exists, upload failed, ...)."""


class SandboxError(T2Error):
    """Generated code cannot be run confined here (bubblewrap missing or unable to create namespaces)."""
