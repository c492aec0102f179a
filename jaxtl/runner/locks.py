"""One run per output directory: a lock file naming the run (pid and host) that writes there."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from jaxtl.train import outputs
from jaxtl.train.outputs import notice

LOCK_FILE = ".jaxtl.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_lock(path: Path, text: str) -> bool:
    """Creates ``path`` holding ``text`` if it does not exist; False if it does.

    The lock never exists half-written: the text goes to a file of this process's own, which
    is then hard-linked to the lock's name (atomic, and it fails if the name exists). A file
    system without hard links gets an exclusive create and then the text, and the lock is
    removed again if writing it fails.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        try:
            tmp.write_text(text)
        except OSError as e:  # a full disk: the message names the lock, not its draft
            raise OSError(e.errno, e.strerror, str(path)) from None
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
            except OSError:
                path.unlink(missing_ok=True)
                raise
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _lock_holder(path: Path) -> tuple[int, str] | None:
    """(pid, host) written in a lock, or None for an empty or garbled lock file."""
    try:
        pid, host = path.read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """One run per output directory: a second gets one line naming the first (pid and host).

    A lock left by a process that no longer exists (on this host), and an empty or garbled lock
    file (no jaxtl run leaves one: the lock is written whole), are taken over with a note.
    """
    path = out_dir / LOCK_FILE
    host = socket.gethostname()
    mine = f"{os.getpid()} {host}\n"
    if not _create_lock(path, mine):
        holder = _lock_holder(path)
        if holder is None and not path.exists():
            pass  # the run that held it has just finished
        elif holder is None:
            notice(f"took over an empty or unreadable lock file {path} (no run holds it)")
        elif holder[1] == host and not _pid_alive(holder[0]):
            notice(
                f"took over a stale lock of process {holder[0]} (no longer running) in {out_dir}"
            )
        else:
            raise outputs.OutputDirError(
                f"another jaxtl run (pid {holder[0]} on {holder[1]}) is writing to {out_dir};"
                f" wait for it to finish or use another --out (remove {path} if that run is gone)"
            )
        path.unlink(missing_ok=True)
        if not _create_lock(path, mine):
            raise outputs.OutputDirError(
                f"another jaxtl run took the lock of {out_dir} just now; wait for it to finish"
                " or use another --out"
            )
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
