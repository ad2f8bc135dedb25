"""Errors that mean "the input or the configuration is wrong" (exit status 2).

Anything else that escapes is an internal error (exit status 1). Messages are
one line and name the file, the parameter and what is wrong.
"""


class InputError(ValueError):
    """Bad input or bad configuration: the user can fix it; exit status 2."""


class CheckpointError(InputError):
    """A checkpoint that is missing, unrecognisable, corrupt or inconsistent."""
