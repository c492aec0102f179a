"""Study parts side by side: each part's cells in order, several parts at once in threads.

A part's single-threaded stretches (tracing and compiling its programs, evaluation set-up, the
Python between compiled calls) leave a core idle; a second part training meanwhile uses it. The
parts share this process's JAX runtime and its one compile cache, and nothing in a result
depends on which part ran beside it (the programs, data and seeds are the same).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

Item = TypeVar("Item")


def run_streams(
    streams: Sequence[Sequence[Item]],
    run: Callable[[Item, Callable[[], bool]], None],
    workers: int,
    stop: Callable[[], bool],
) -> None:
    """Runs every stream's items in order, up to ``workers`` streams at once.

    ``run(item, halt)`` does one item and polls ``halt()`` as training polls a stop request:
    it turns true when ``stop()`` does (a signal) or when another stream failed. A failure
    halts the other streams (each stops at its next check, a checkpoint saved) and is raised
    once every stream has stopped; an exception that reaches the waiting (main) thread, such as
    a second SIGINT, halts them the same way. With one worker (or one stream) the items run
    here, one after another.

    Args:
      streams: lists of items (a study's parts, each the list of its cells).
      run: does one item.
      workers: how many streams run at once (threads).
      stop: whether a signal asked the run to stop.

    Example:
      >>> done = []
      >>> run_streams([[1, 2], [3]], lambda item, halt: done.append(item), 2, lambda: False)
      >>> sorted(done)
      [1, 2, 3]
    """
    if workers <= 1 or len(streams) <= 1:
        for stream in streams:
            for item in stream:
                run(item, stop)
        return
    failed = threading.Event()
    halt = lambda: failed.is_set() or stop()
    pending = collections.deque(streams)
    take = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while not failed.is_set():
                with take:
                    if not pending:
                        return
                    stream = pending.popleft()
                for item in stream:
                    if failed.is_set():
                        return
                    run(item, halt)
        except BaseException as e:  # noqa: BLE001 (raised in the waiting thread below)
            errors.append(e)
            failed.set()

    threads = [
        threading.Thread(target=work, name=f"jaxtl-stream-{i}")
        for i in range(min(workers, len(streams)))
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        failed.set()
        for thread in threads:
            thread.join()
        raise
    if errors:
        # The first is the cause; the others are the halts it asked for.
        raise errors[0]
