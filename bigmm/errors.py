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


class OutputError(BigmmError):
    """The run directory (or another output path) cannot be written."""


def missing_reason(path) -> str:
    """Why ``path`` cannot be opened, in words for a message: ``"does not exist"``, or what
    ``exists()`` hides: a symbolic link that loops, a link to nothing, a folder without access.

    >>> missing_reason("/no/such/file")
    'does not exist'
    """
    import errno
    import os

    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link that loops back on itself (or a folder on its path does): fix the link"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"cannot be reached: permission denied ({exc.strerror}); check the folders' permissions"
        if exc.errno == errno.ENOTDIR:
            return "does not exist (a part of its path is a file, not a folder)"
        if os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        return "does not exist"
    return "exists"
