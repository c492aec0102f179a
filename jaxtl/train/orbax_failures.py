"""What orbax and the disk say when a checkpoint fails, turned into jaxtl's one line.

Orbax logs through absl and leaves clean-up tracebacks behind a failed read; a full or read-only
disk reaches jaxtl as text inside tensorstore's ValueError. These helpers keep the first quiet
and find the second, so a command reports one line that says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any


def is_orbax_noise(unraisable: Any) -> bool:
    """Whether an exception Python could not raise (``sys.unraisablehook``) is orbax cleaning
    up after a failed read that jaxtl has already reported in its own line.

    When a read fails, tensorstore calls back into an asyncio loop orbax already closed, and
    the coroutines orbax abandoned are finalised later, each with a traceback.

    Example:
      >>> sys.unraisablehook = lambda u: None if is_orbax_noise(u) else print(u)  # doctest: +SKIP
    """
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
    """Keeps orbax's logging (absl) and its clean-up tracebacks off the terminal.

    Used where jaxtl handles the failure itself (a one-line error, a skipped checkpoint):
    the library's own account of it would only bury jaxtl's line. Other unraisable
    exceptions still reach the previous hook.

    Example:
      >>> with quiet_orbax():
      ...     variables, meta = load_variables(path)
    """
    with _ORBAX:
        absl = logging.getLogger("absl")
        level, previous_hook = absl.level, sys.unraisablehook

        def hook(unraisable: Any) -> None:
            if not is_orbax_noise(unraisable):
                previous_hook(unraisable)

        absl.setLevel(logging.CRITICAL)
        sys.unraisablehook = hook
        try:
            yield
        finally:
            absl.setLevel(level)
            if sys.unraisablehook is hook:
                sys.unraisablehook = previous_hook


# One orbax call at a time across threads (study parts run in threads, jaxtl.runner.streams):
# the log level and unraisable hook swapped above are process-wide.
_ORBAX = threading.RLock()


# Disk errors come from tensorstore as text in a ValueError ("... No space left on device
# [os_error_code='28']"), from Python as an OSError with an errno.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def disk_error(error: BaseException, path: str | os.PathLike) -> OSError | None:
    """The OSError (naming ``path``) behind a failed write that the disk refused (full, over
    quota, read-only), or None when ``error`` is something else.

    Example:
      >>> disk_error(ValueError("... No space left on device [os_error_code='28']"), "/ckpt").errno
      28
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_ERRNOS:
            code = seen.errno
            break
        match = _OS_ERROR_CODE.search(str(seen))
        if match and int(match.group(1)) in _DISK_ERRNOS:
            code = int(match.group(1))
            break
        seen = seen.__cause__ or seen.__context__
    else:
        return None
    return OSError(code, os.strerror(code), os.fspath(path))
