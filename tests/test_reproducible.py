"""A run's results are a function of its config and seed only, and a changed input is never
served from an old result.

Driven as a user would: ``jaxtl run`` into an output directory, then the same command again
after changing a setting, deleting a cached source model or fixing the data file in place.
"""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxtl import cli
from jaxtl.runner import pretraining as sources_lib
from jaxtl.train import checkpoint as ckpt_lib

# Per-chunk timings and the wall time differ from run to run; every other number must not.
_TIMING = ("step_time_s", "examples_per_s", "wall_time_s")
# The fixed protocol: a seed's result depends on that seed alone (the tuned one averages the
# selection over the seeds, so there the seed list is part of the result by design).
_FIXED = ("protocol.name=fixed",)


def _run(out: Path, overrides, *more: str) -> int:
    return cli.main(["run", "strategies", "--out", str(out), "--set", *overrides, *_FIXED, *more])


def _seed_dir(out: Path, seed: int) -> Path:
    (cell,) = [p for p in (out / "runs").iterdir() if not p.name.startswith(".")]
    return cell / f"seed_{seed}"


def _results(out: Path, seed: int) -> dict:
    return json.loads((_seed_dir(out, seed) / "results.json").read_text())


def _numbers(out: Path, seed: int) -> tuple[dict, list[dict]]:
    """A run's metrics and its metrics.jsonl, without timings."""
    metrics = {k: v for k, v in _results(out, seed)["metrics"].items() if k not in _TIMING}
    lines = (_seed_dir(out, seed) / "metrics.jsonl").read_text().splitlines()
    log = [{k: v for k, v in json.loads(x).items() if k not in _TIMING} for x in lines]
    return metrics, log


def _source_dir(out: Path, seed: int) -> Path:
    (root,) = (out / "sources").glob("a-*")
    return root / f"seed_{seed}"


def _source_weights(out: Path, seed: int) -> dict[str, np.ndarray]:
    variables, _ = ckpt_lib.load_variables(_source_dir(out, seed))
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def _assert_same_weights(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want) and len(want) > 3
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.fixture(autouse=True)
def _fresh_source_loads(monkeypatch):
    # Source models are read from disk once per process; these tests change what is on disk.
    monkeypatch.setattr(sources_lib, "_LOADED", {})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_overrides):
    """The tiny run with seeds=[0] and with seeds=[0,1], each into its own directory."""
    tmp = tmp_path_factory.mktemp("repro")
    outs = {"one": tmp / "one", "two": tmp / "two"}
    sources_lib._LOADED.clear()
    assert _run(outs["one"], tiny_overrides) == 0
    assert _run(outs["two"], tiny_overrides, "seeds=[0,1]") == 0
    return outs


def test_seed_0_is_bit_identical_with_or_without_seed_1(runs):
    _assert_same_weights(_source_weights(runs["two"], 0), _source_weights(runs["one"], 0))
    got, want = _numbers(runs["two"], 0), _numbers(runs["one"], 0)
    assert got == want
    assert {"acc_b", "train_flops"} <= set(got[0])


def test_a_deleted_source_seed_retrains_to_the_same_bits(runs, tmp_path, tiny_overrides):
    out = tmp_path / "copy"
    shutil.copytree(runs["two"], out)
    shutil.rmtree(_source_dir(out, 1))  # as a kill while seed 1's model was being saved leaves
    shutil.rmtree(out / "runs")

    assert _run(out, tiny_overrides, "seeds=[0,1]") == 0

    # Seed 1 was trained alone this time, in the slot program seeds 0 and 1 shared before.
    _assert_same_weights(_source_weights(out, 1), _source_weights(runs["two"], 1))
    for seed in (0, 1):
        assert _numbers(out, seed) == _numbers(runs["two"], seed)


def test_a_changed_setting_reruns_and_results_hold_it(runs, tmp_path, tiny_overrides, capsys):
    out = tmp_path / "copy"
    shutil.copytree(runs["one"], out)
    old = _results(out, 0)
    assert old["config"]["train_b"]["lr"] == 1e-3
    sources_before = sorted(p.name for p in (out / "sources").iterdir())
    capsys.readouterr()

    assert _run(out, tiny_overrides, "train_b.lr=0.5") == 0

    new = _results(out, 0)
    assert new["config"]["train_b"]["lr"] == 0.5
    assert new["fingerprint"] != old["fingerprint"]
    assert _numbers(out, 0)[1] != _numbers(runs["one"], 0)[1]  # trained again, with lr 0.5
    # The old run is kept aside, not deleted; B's lr does not touch the source models.
    (stale,) = (out / "runs" / ".stale").glob("*/seed_0-*")
    assert json.loads((stale / "results.json").read_text()) == old
    assert sorted(p.name for p in (out / "sources").iterdir()) == sources_before
    notes = [x for x in capsys.readouterr().err.splitlines() if x.startswith("jaxtl: note:")]
    assert len(notes) == 1 and "seed 0" in notes[0] and "changed" in notes[0], notes
    assert str(stale) in notes[0]


def _write_npz(path: Path, seed: int) -> None:
    rs = np.random.RandomState(seed)
    y = np.repeat(np.arange(10), 24).astype(np.int64)
    x = rs.randint(0, 256, (len(y), 8, 8)).astype(np.uint8)
    x[np.arange(len(y)), y % 8, y // 8 * 4] = 255  # a learnable mark per class
    np.savez(path, x=x, y=y)


def test_data_fixed_in_place_retrains_sources_and_runs(tmp_path, tiny_overrides, capsys):
    data = tmp_path / "mine.npz"
    out = tmp_path / "out"
    spec = (f"data.a=npz:{data}",)
    _write_npz(data, seed=0)
    assert _run(out, tiny_overrides, *spec) == 0
    old_results, (old_source,) = _results(out, 0), list((out / "sources").iterdir())
    capsys.readouterr()

    _write_npz(data, seed=1)  # the user fixes the file in place: same path, other contents
    assert _run(out, tiny_overrides, *spec) == 0

    new_source = [p for p in (out / "sources").iterdir() if p != old_source]
    assert len(new_source) == 1  # a source model keyed by the new contents was trained
    assert (new_source[0] / "seed_0" / "model.json").is_file()
    new_results = _results(out, 0)
    assert new_results["fingerprint"] != old_results["fingerprint"]
    err = capsys.readouterr().err.splitlines()
    notes = [x for x in err if x.startswith("jaxtl: note:")]
    assert any("seed 0" in x and "data" in x for x in notes), err
    assert any(
        x.startswith("jaxtl: note: source models on A: the contents of its data changed")
        for x in notes
    ), err
    assert all(x.startswith("jaxtl: note:") for x in err), err


def test_settings_changed_back_and_forth_retrain_each_time_and_keep_every_old_run(
    runs, tmp_path, tiny_overrides, capsys
):
    # seeds=[0,1], then seeds=[0] at another lr (seed 1 is retired too: a cell never holds two
    # settings), then the first lr again, then the other again: each command trains from step 0
    # (never a finished checkpoint of the same settings) and every old run is kept apart.
    out = tmp_path / "copy"
    shutil.copytree(runs["two"], out)
    keys = {"0.001": _results(out, 0)["fingerprint"]}
    for lr in ("0.5", "0.001", "0.5"):
        assert _run(out, tiny_overrides, f"train_b.lr={lr}") == 0
        keys[lr] = _results(out, 0)["fingerprint"]
        assert [p.name for p in _seed_dir(out, 0).parent.glob("seed_*")] == ["seed_0"]
        assert _results(out, 0)["config"]["train_b"]["lr"] == float(lr)
        assert _results(out, 0)["metrics"]["wall_time_s"] > 0
        assert [r["step"] for r in _numbers(out, 0)[1]] == [10, 20, 20]
    err = capsys.readouterr().err
    assert "Traceback" not in err and "seed 1: its settings, data or code changed" in err
    assert _run(out, tiny_overrides, "train_b.lr=0.001") == 0
    assert _numbers(out, 0) == _numbers(runs["two"], 0)  # back to the first settings' bits
    (stale,) = (out / "runs" / ".stale").iterdir()
    a, b = keys["0.001"], keys["0.5"]
    assert sorted(p.name for p in stale.glob("seed_*")) == sorted(
        [f"seed_1-{a}", f"seed_0-{a}", f"seed_0-{b}", f"seed_0-{a}-2", f"seed_0-{b}-2"]
    )
    assert all((p / "results.json").is_file() for p in stale.glob("seed_*"))
    assert not list(stale.glob("*/seed_*"))  # none nested inside another


@pytest.mark.parametrize("damage", ["", '{"fingerprint": '], ids=["empty", "truncated"])
def test_a_damaged_results_file_retrains_from_step_0_and_keeps_the_old_run(
    runs, tmp_path, tiny_overrides, capsys, damage
):
    out = tmp_path / "copy"
    shutil.copytree(runs["one"], out)
    (_seed_dir(out, 0) / "results.json").write_text(damage)
    capsys.readouterr()

    assert _run(out, tiny_overrides) == 0

    # Not resumed from the finished checkpoint beside it: every record and the time are there.
    assert _numbers(out, 0) == _numbers(runs["one"], 0)
    assert _results(out, 0)["metrics"]["wall_time_s"] > 0
    (stale,) = (out / "runs" / ".stale").glob("*/seed_0-unreadable")
    assert (stale / "results.json").read_text() == damage
    assert len(list(stale.parent.glob("checkpoints-*"))) == 1
    (note,) = capsys.readouterr().err.splitlines()
    assert note.startswith("jaxtl: note: ") and "seed 0: its results.json is unreadable" in note
    assert cli.main(["report", str(out)]) == 0
