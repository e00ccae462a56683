"""Errors that bigmm reports to the user.

A :class:`BigmmError` is a problem with the user's input, configuration or
environment (a bad file, a wrong key, no overlapping samples). The command
line prints its message without a traceback and exits non-zero; anything else
is a bug and keeps its traceback.
"""


class BigmmError(Exception):
    """A problem the user can fix; the message says what and where."""


class InputError(BigmmError):
    """An input file (genotypes, phenotypes, covariates, lists) is unusable."""


class ConfigError(BigmmError):
    """The run configuration is invalid."""
