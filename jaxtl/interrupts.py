"""SIGINT and SIGTERM in the ``jaxtl`` command: one line and exit status 130 / 143, whenever
they arrive.

The command installs :func:`install` before it imports anything slow (the console script does so
while ``jaxtl.cli`` is imported, before jax, flax or a dataset is loaded). From then on every
SIGINT/SIGTERM is recorded here. Inside :func:`armed` (the command's body) the handler also
raises :class:`Stopped` at once; Python cannot propagate an exception out of some places it may
land in (a garbage-collector callback such as XLA's, a ``__del__``), so the record stays and the
runner raises it at its next check (:func:`raise_if_pending`), and the training driver polls it
between chunks (the command keeps such a swallowed :class:`Stopped` off ``sys.unraisablehook``).
Only the standard library is imported here, so installing costs nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the command outside training (loading, checking, reporting).

    Example:
      >>> Stopped(signal.SIGTERM).signum == signal.SIGTERM
      True
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# Signals received since install(), oldest first; whether the handler raises; the handlers
# install() replaced (None while not installed).
_received: list[int] = []
_armed = False
_previous: dict[int, Any] | None = None


def _handler(signum: int, frame: Any) -> None:
    _received.append(signum)
    if _armed:
        raise Stopped(signum)


def install() -> bool:
    """Records SIGINT/SIGTERM from now on (main thread only; a second call is a no-op).

    Returns:
      True if this call installed the handlers (False when already installed or off the main
      thread, where Python does not allow signal handlers).

    Example:
      >>> install(); restore()  # doctest: +SKIP
    """
    global _previous
    if _previous is not None or threading.current_thread() is not threading.main_thread():
        return False
    forget()
    _previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    return True


def restore() -> None:
    """Puts back the handlers :func:`install` found and forgets the signals it recorded.

    Example:
      >>> restore()  # nothing installed: a no-op
    """
    global _previous
    if _previous is None:
        return
    for s, handler in _previous.items():
        signal.signal(s, handler)
    _previous = None
    forget()


def installed() -> bool:
    """Whether :func:`install` is in effect (the command runs), so the record is the command's.

    Example:
      >>> installed()  # doctest: +SKIP
      False
    """
    return _previous is not None


def forget() -> None:
    """Drops the recorded signals: a library caller's stop is over once its run has stopped.

    Example:
      >>> forget()
    """
    _received.clear()


def record(signum: int) -> None:
    """Notes a signal a handler of its own received (training's: stop at the next chunk).

    Example:
      >>> record(signal.SIGTERM)  # doctest: +SKIP
    """
    _received.append(signum)


def pending() -> int | None:
    """The first signal recorded since :func:`install`, or None.

    Example:
      >>> pending() is None  # doctest: +SKIP
      True
    """
    return _received[0] if _received else None


def raise_if_pending() -> None:
    """Raises :class:`Stopped` for a recorded signal; a check between slow steps.

    Example:
      >>> raise_if_pending()  # nothing recorded: returns
    """
    if _received:
        raise Stopped(_received[0])


@contextlib.contextmanager
def armed() -> Iterator[None]:
    """Inside, SIGINT/SIGTERM raise :class:`Stopped` where they land (one recorded before
    raises on entry); outside, they are only recorded.

    Example:
      >>> with armed():  # doctest: +SKIP
      ...     load_everything()
    """
    global _armed
    raise_if_pending()
    _armed = True
    try:
        yield
    finally:
        _armed = False


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Inside :func:`armed`, a stretch where signals are only recorded, then raised on exit.

    For imports: an exception in the middle of ``import jax`` would leave half a module behind
    for the interpreter's shutdown to trip over; the import takes seconds, the stop waits for it.

    Example:
      >>> with held():  # doctest: +SKIP
      ...     from jaxtl import runner
    """
    global _armed
    was, _armed = _armed, False
    try:
        yield
    finally:
        _armed = was
    if was:
        raise_if_pending()
