"""Exceptions the command line turns into a one-line error message (no traceback)."""


class SpatialReasonerError(Exception):
    """Base class: an error whose message alone tells the user what is wrong and where."""


class ConfigError(SpatialReasonerError):
    """The configuration is invalid; the message names the key and what was expected."""


class DataError(SpatialReasonerError):
    """An input file is invalid; the message names the file, row or key and what was expected."""
