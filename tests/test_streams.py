"""Study parts side by side (jaxtl.runner.streams, ``parallel_parts``).

Unit cases of the stream runner with plain functions, then a two-part study run both ways:
the same bits whether its parts train one at a time or at once, and a SIGTERM during parts at
once leaves checkpoints from which a rerun gives the uninterrupted run's results.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from jaxtl import runner
from jaxtl.config import ConfigError, apply_overrides, load_config
from jaxtl.runner.streams import run_streams
from jaxtl.train import Interrupted, outputs

never = lambda: False


def test_each_stream_runs_in_order_and_streams_run_at_once():
    done, running, most = [], set(), [0]
    lock = threading.Lock()
    both = threading.Barrier(2, timeout=30)

    def run(item, halt):
        with lock:
            running.add(item[0])
            most[0] = max(most[0], len(running))
        if item[1] == 0:
            both.wait()  # the first items of the two streams are in flight together
        with lock:
            running.discard(item[0])
            done.append(item)

    streams = [[("a", 0), ("a", 1), ("a", 2)], [("b", 0), ("b", 1)]]
    run_streams(streams, run, 2, never)
    assert most[0] == 2
    assert [i for i in done if i[0] == "a"] == streams[0]
    assert [i for i in done if i[0] == "b"] == streams[1]


def test_one_worker_runs_everything_here_in_order():
    done, threads = [], set()
    run = lambda item, halt: (done.append(item), threads.add(threading.current_thread()))
    run_streams([[1, 2], [3], [4, 5]], run, 1, never)
    assert done == [1, 2, 3, 4, 5] and threads == {threading.current_thread()}


def test_more_streams_than_workers_are_all_run():
    done = []
    run_streams([[i] for i in range(7)], lambda item, halt: done.append(item), 3, never)
    assert sorted(done) == list(range(7))


def test_a_failure_halts_the_other_stream_and_is_raised():
    done = []
    started = threading.Event()

    def run(item, halt):
        if item == "bad":
            started.wait(30)
            raise ValueError("part a failed")
        started.set()
        deadline = time.monotonic() + 30
        while not halt():  # training polls its stop request between chunks
            assert time.monotonic() < deadline
            time.sleep(0.01)
        done.append(item)
        raise Interrupted(10, None)

    with pytest.raises(ValueError, match="part a failed"):
        run_streams([["bad", "never"], ["slow", "never either"]], run, 2, never)
    assert done == ["slow"]


def test_a_stop_request_reaches_every_stream():
    asked, seen = threading.Event(), []

    def run(item, halt):
        asked.set()
        deadline = time.monotonic() + 30
        while not halt():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        seen.append(item)

    run_streams([["a"], ["b"]], run, 2, asked.is_set)
    assert sorted(seen) == ["a", "b"]


# ---- a two-part study ------------------------------------------------------------------------

TWO_PARTS = (
    "parts=['strategies','cross_domain']",
    "strategies=['full_ft']",
    "protocol.name=fixed",
    "train_b.steps=40",
    "checkpoint_every=0",
    "checkpoint_seconds=3600",
)


def _study(tiny_overrides, *more):
    return apply_overrides(load_config("study"), [*tiny_overrides, *TWO_PARTS, *more])


def _results(out):
    found = {}
    for path in sorted(out.glob("runs/*/seed_*/results.json")):
        record = json.loads(path.read_text())
        logged = [json.loads(line) for line in (path.parent / "metrics.jsonl").open()]
        losses = [r.get("loss") for r in logged]
        found[path.parent.parent.name] = (record["metrics"]["acc_b"], record["metrics"]["acc_a"])
        found[path.parent.parent.name + "/losses"] = losses
    return found


@pytest.fixture(scope="module")
def one_at_a_time(tiny_overrides, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_at_a_time")
    runner.run_experiment(_study(tiny_overrides, "parallel_parts=1"), out, show_progress=False)
    return _results(out)


def test_parts_at_once_give_the_bits_of_parts_one_at_a_time(
    one_at_a_time, tiny_overrides, tmp_path
):
    config = _study(tiny_overrides, "parallel_parts=2")
    runner.run_experiment(config, tmp_path, show_progress=False)
    got = _results(tmp_path)
    assert len(got) == 4 and got == one_at_a_time
    record = json.loads(next(tmp_path.glob("runs/*/seed_0/results.json")).read_text())
    assert record["config"]["parallel_parts"] == 2


def test_sigterm_during_parts_at_once_resumes_to_the_same_results(
    one_at_a_time, tiny_overrides, tmp_path, monkeypatch
):
    append = outputs.RunDir.append_metrics

    def append_then_sigterm(self, record):
        append(self, record)
        if record["step"] == 10 and record.get("phase") != "final":
            os.kill(os.getpid(), signal.SIGTERM)  # jaxtl's handler: stop at the next chunk

    monkeypatch.setattr(outputs.RunDir, "append_metrics", append_then_sigterm)
    config = _study(tiny_overrides, "parallel_parts=2")
    with pytest.raises(Interrupted) as stopped:
        runner.run_experiment(config, tmp_path, show_progress=False)
    assert stopped.value.signum == signal.SIGTERM
    assert list(tmp_path.glob("runs/*/checkpoints-*"))
    monkeypatch.setattr(outputs.RunDir, "append_metrics", append)
    runner.run_experiment(config, tmp_path, show_progress=False)
    assert _results(tmp_path) == one_at_a_time


def test_parallel_parts_must_be_a_positive_int(tiny_overrides, tmp_path):
    with pytest.raises(ConfigError, match=r"^parallel_parts=0 must be an int >= 1$"):
        runner.run_experiment(_study(tiny_overrides, "parallel_parts=0"), tmp_path)
