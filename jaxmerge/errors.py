"""Errors that mean "the input or the configuration is wrong" (exit status 2).

Anything else that escapes is an internal error (exit status 1). Messages are
one line and name the file, the parameter and what is wrong.
"""

import contextlib
import errno
import os
import pathlib
import re


class InputError(ValueError):
    """Bad input or bad configuration: the user can fix it; exit status 2."""


class CheckpointError(InputError):
    """A checkpoint that is missing, unrecognisable, corrupt or inconsistent."""


class OutputError(InputError):
    """The output cannot be written (no permission, disk full, file-size limit); exit status 2.

    Not a bug in jaxmerge, and fixed by the user (free space, another --output, a higher
    `ulimit -f`), so it shares bad input's status; a re-run resumes what was written.
    """


_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "the file-size limit was hit (ulimit -f / RLIMIT_FSIZE, or the filesystem's)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only filesystem",
}


def write_failure(output, error: OSError, parameter: str | None = None) -> OutputError:
    """One line: the output, the parameter being written, and why the write failed."""
    cause = _CAUSES.get(error.errno, error.strerror or type(error).__name__)
    code = f" ({errno.errorcode[error.errno]})" if error.errno in errno.errorcode else ""
    what = f"writing parameter {parameter!r}" if parameter else "writing"
    file = f" to {error.filename}" if error.filename else ""
    return OutputError(
        f"{pathlib.Path(output)}: {what}{file} failed: {cause}{code}; nothing was finalized "
        "(fix it and re-run: the merge resumes)"
    )


# TensorStore reports the operating system's error inside its message.
_TENSORSTORE_OS_ERROR = re.compile(r"os_error_code='(\d+)'")


@contextlib.contextmanager
def writing(output, parameter: str | None = None):
    """Turns a failed write of `output` (an OSError, or TensorStore's report of one such as
    a full disk) into an OutputError naming the output and the parameter."""
    try:
        yield
    except OSError as e:
        raise write_failure(output, e, parameter) from e
    except CheckpointError as e:
        found = _TENSORSTORE_OS_ERROR.search(str(e))
        if found is None or int(found.group(1)) not in _CAUSES:
            raise
        code = int(found.group(1))
        raise write_failure(output, OSError(code, os.strerror(code)), parameter) from e
