"""Which runs a report counts and how it names them: hidden directories are never read, options
make their own cells and labels, seeds of different settings are not pooled, the task and
options blocks are validated, and results.csv / ``jaxtl.report.load`` give the same runs back."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from report_records import tuned_block

from jaxtl import report
from jaxtl.report import ResultsError, collect_runs, load, load_results, write_report
from jaxtl.report.cells import group_cells, labeller
from jaxtl.report.rows import CSV_FILE

PARAMS = {"dataset_a": "mnist5k", "dataset_b": "mnist5k", "model": "mlp", "n_per_class": 5}


def run(strategy: str, seed: int, acc_b: float, **fields) -> dict:
    """A results.json record as the runner writes it, with the task and options blocks."""
    record = {
        "experiment": "strategies",
        "strategy": strategy,
        "seed": seed,
        "params": dict(PARAMS),
        "metrics": {
            "acc_b": acc_b,
            "acc_a": 0.9,
            "acc_ood": None,
            "flops_per_step": 1e6,
            "train_flops": 2e8,
            "wall_time_s": 1.5,
            "peak_memory_bytes": 2**20,
            "trainable_params": 100,
            "total_params": 1000,
        },
        "protocol": {"name": "fixed"},
        "options": {},
        "task": {
            "a": "mnist5k",
            "b": "mnist5k",
            "source": "trained on A",
            "input_shape": [784],
            "num_classes_b": 5,
            "test_b": {"source": "mnist5k test split, classes 5-9", "examples": 500},
        },
        "fingerprint": "f1",
        "config": {"seeds": [0, 1, 2], "train_b": {"lr": 0.001, "steps": 100}},
        "device": "cpu",
        "finished_at": f"2026-12-01T10:00:0{seed}",
    }
    for key, value in fields.items():
        record[key] = value
    return record


def write(root: Path, records: list[dict], under: str = "runs") -> Path:
    for i, r in enumerate(records):
        folder = root / under / f"cell{i:03d}" / f"seed_{r['seed']}"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(r))
    return root


# ---- hidden directories --------------------------------------------------------------------------


def test_stale_and_damaged_directories_are_never_read(tmp_path):
    write(tmp_path, [run("full_ft", s, 0.8) for s in (0, 1)])
    # What a rerun leaves behind: a superseded run (malformed, even) and a damaged cache.
    write(tmp_path, [run("full_ft", 2, 0.1)], under="runs/.stale/strategies-full_ft")
    (tmp_path / "runs" / ".stale" / "broken").mkdir()
    (tmp_path / "runs" / ".stale" / "broken" / "results.json").write_text("{not json")
    damaged = tmp_path / "sources" / ".damaged-a-123" / "seed_0"
    damaged.mkdir(parents=True)
    (damaged / "results.json").write_text("{}")
    assert [r["seed"] for r in load_results(tmp_path)] == [0, 1]
    text = write_report(tmp_path).read_text()
    assert "**Runs**: 2" in text and "**Seeds**: 0, 1" in text


def test_a_directory_of_only_stale_runs_has_no_results(tmp_path):
    write(tmp_path, [run("full_ft", 0, 0.8)], under="runs/.stale")
    with pytest.raises(ResultsError, match="no results.json found under"):
        load_results(tmp_path)


# ---- validation of the task and options blocks ---------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("options", [1], "key 'options' must be an object"),
        ("options", {"k": {"x": 1}}, "key 'options.k' must be a number, string, bool, null"),
        ("task", "mnist", "key 'task' must be an object"),
        ("task", {"input_shape": [32, 0]}, "key 'task.input_shape' must be a list of positive"),
        ("task", {"num_classes_b": 1}, "key 'task.num_classes_b' must be an int >= 2"),
        ("task", {"test_b": {"examples": 3}}, "key 'task.test_b' must be an object like"),
        ("task", {"test_b": {"source": "x", "examples": 0}}, "'task.test_b.examples' must be"),
    ],
)
def test_malformed_task_or_options_is_a_one_line_error(tmp_path, field, value, message):
    write(tmp_path, [run("full_ft", 0, 0.8, **{field: value})])
    with pytest.raises(ResultsError, match=message.replace("[", r"\[")) as err:
        load_results(tmp_path)
    assert "cell000/seed_0/results.json" in str(err.value) and "\n" not in str(err.value)


def test_absent_task_keys_read_as_none(tmp_path):
    write(tmp_path, [run("full_ft", 0, 0.8, task={"b": "mnist5k"})])
    (record,) = load_results(tmp_path)
    assert record["task"] == {
        "a": None,
        "b": "mnist5k",
        "source": None,
        "input_shape": None,
        "num_classes_b": None,
        "test_b": None,
    }


# ---- options: own cells, own labels --------------------------------------------------------------


def test_runs_with_different_options_are_two_cells_and_labelled(tmp_path):
    records = [run("lp_ft", s, 0.8) for s in (0, 1)]
    records += [run("lp_ft", s, 0.7, options={"lp_fraction": 0.2}) for s in (0, 1)]
    write(tmp_path, records)
    cells = group_cells(load_results(tmp_path))
    label = labeller(cells)
    assert sorted((label(c), len(c.runs)) for c in cells) == [
        ("lp_ft", 2),
        ("lp_ft (lp_fraction=0.2)", 2),
    ]
    text = write_report(tmp_path).read_text()
    results = text.split("### strategies\n", 1)[1]
    assert "| lp_ft | 5/class | 2 | 80.00 ± 0.00 |" in results
    assert "| lp_ft (lp_fraction=0.2) | 5/class | 2 | 70.00 ± 0.00 |" in results
    assert "- **Strategies**: lp_ft, lp_ft (lp_fraction=0.2)" in text


def test_an_option_that_is_also_a_param_is_shown_once(tmp_path):
    freeze = run("freeze_first_k", 0, 0.8, options={"k": 2})
    freeze["params"]["k"] = 2
    write(tmp_path, [freeze, run("full_ft", 0, 0.8)])
    cells = group_cells(load_results(tmp_path))
    assert sorted(map(labeller(cells), cells)) == ["freeze_first_k (k=2)", "full_ft"]


# ---- seeds of one cell made with different settings ----------------------------------------------


def test_seeds_of_other_settings_are_left_out_with_a_warning(tmp_path, capsys):
    # seeds=[0,1] at lr 1e-3, then seeds=[0] at lr 3e-3 into the same --out: the runner retired
    # the old seed 0; seed 1 is left from the first command.
    old = run("full_ft", 1, 0.70)
    new = run(
        "full_ft",
        0,
        0.90,
        fingerprint="f2",
        config={"seeds": [0], "train_b": {"lr": 0.003, "steps": 100}},
        finished_at="2026-12-02T09:00:00",
    )
    write(tmp_path, [old, new, run("linear_probe", 0, 0.6), run("linear_probe", 1, 0.6)])
    text = write_report(tmp_path).read_text()
    warning = (
        "strategies full_ft, 5/class, mnist5k → mnist5k (mlp): seed 1 left out, made with "
        "other settings than the kept seed 0 (the cell's most recent): train_b.lr=0.001 "
        "(kept: 0.003); rerun it with the current settings, or run the other settings into "
        "another --out"
    )
    assert f"jaxtl: warning: {warning}" in capsys.readouterr().err.splitlines()
    assert text.index("## Warnings") < text.index("## Summary")
    assert f"- {warning}" in text
    row = next(x for x in text.splitlines() if x.startswith("| full_ft | 5/class |"))
    assert row.startswith("| full_ft | 5/class | 1 | 90.00 |")  # seed 1 is not pooled in
    assert "1 made with other settings left out, see Warnings" in text
    rows = list(csv.DictReader((tmp_path / CSV_FILE).open()))
    assert sorted((r["strategy"], r["seed"]) for r in rows) == [
        ("full_ft", "0"),
        ("linear_probe", "0"),
        ("linear_probe", "1"),
    ]


def test_the_larger_group_wins_a_tie_in_time_and_same_config_names_the_fingerprint(tmp_path):
    records = [run("full_ft", s, 0.8) for s in (0, 1, 2)]
    records[2]["fingerprint"] = "f9"  # same config: the data or code changed
    records[2]["finished_at"] = records[1]["finished_at"] = "2026-12-01T10:00:09"
    runs = collect_runs(write(tmp_path, records), warn=False)
    assert sorted(r["seed"] for r in runs.records) == [0, 1]
    (line,) = runs.warnings()
    assert "seed 2 left out" in line and "kept seeds 0, 1" in line
    assert "the same config, but the data contents, code version or seed slots differ" in line
    assert "(fingerprint f9, kept: f1)" in line


def test_a_cell_of_one_setting_gives_no_warning(tmp_path, capsys):
    records = [run("full_ft", s, 0.8) for s in (0, 1)]
    records[1]["config"] = {"seeds": [1], "train_b": {"lr": 0.001, "steps": 100}}  # only seeds
    runs = collect_runs(write(tmp_path, records))
    assert len(runs.records) == 2 and runs.left_out == [] and capsys.readouterr().err == ""


def test_without_fingerprints_the_config_decides(tmp_path):
    records = [run("full_ft", s, 0.8) for s in (0, 1)]
    for r in records:
        del r["fingerprint"]
    records[0]["config"] = {"train_b": {"lr": 0.01, "steps": 100}, "bn_policy": "train"}
    (line,) = collect_runs(write(tmp_path, records), warn=False).warnings()
    assert 'bn_policy="train" (kept: absent), train_b.lr=0.01 (kept: 0.001)' in line


# ---- results.csv and load ------------------------------------------------------------------------


def csv_records() -> list[dict]:
    records = [run("full_ft", s, 0.8 + s / 100) for s in (0, 1)]
    records += [
        run(
            "lp_ft",
            0,
            0.75,
            options={"lp_fraction": 0.2},
            protocol=tuned_block(
                {"lr": 0.003, "ft_lr": 0.1},
                [({"lr": 0.003, "ft_lr": 0.1}, [0.5, 0.6], [0.7, None])],
                seeds=(1000, 1001),
            ),
        )
    ]
    freeze = run("freeze_first_k", 0, 0.7)
    freeze["params"]["k"] = 2
    del freeze["task"]  # an older file: the task columns stay empty
    return records + [freeze]


def test_results_csv_has_one_row_per_run_in_a_stable_column_order(tmp_path):
    write(tmp_path, csv_records())
    write_report(tmp_path)
    with (tmp_path / CSV_FILE).open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    assert header[:10] == [
        "experiment", "a", "b", "model", "strategy", "options", "label", "n_per_class", "k",
        "seed",
    ]  # fmt: skip
    assert header[10:13] == ["protocol", "selected_ft_lr", "selected_lr"]
    assert header[13:22] == [
        "acc_b", "acc_a", "acc_ood", "trainable_params", "total_params", "flops_per_step",
        "train_flops", "wall_time_s", "peak_memory_bytes",
    ]  # fmt: skip
    assert header[-4:] == ["device", "finished_at", "fingerprint", "results_file"]
    assert [(r["strategy"], r["seed"]) for r in rows] == [
        ("freeze_first_k", "0"),
        ("full_ft", "0"),
        ("full_ft", "1"),
        ("lp_ft", "0"),
    ]
    freeze, ft0, ft1, lp_ft = rows
    assert ft1["acc_b"] == "0.81" and ft1["acc_ood"] == "" and ft1["n_per_class"] == "5"
    assert ft0["input_shape"] == "784" and ft0["num_classes_b"] == "5"
    assert ft0["test_b_source"] == "mnist5k test split, classes 5-9"
    assert ft0["test_b_examples"] == "500" and ft0["a"] == "mnist5k"
    assert json.loads(lp_ft["options"]) == {"lp_fraction": 0.2}
    assert lp_ft["label"] == "lp_ft (lp_fraction=0.2)"
    assert (lp_ft["protocol"], lp_ft["selected_lr"], lp_ft["selected_ft_lr"]) == (
        "tuned",
        "0.003",
        "0.1",
    )
    assert freeze["k"] == "2" and ft0["k"] == "" and freeze["test_b_examples"] == ""
    assert freeze["results_file"].endswith("cell003/seed_0/results.json")
    # Written atomically: no temporary file is left beside it; as readable as report.md.
    assert sorted(p.name for p in tmp_path.glob("*results.csv*")) == [CSV_FILE]
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777
    assert mode(CSV_FILE) == mode("report.md")


def test_a_failed_csv_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    write(tmp_path, csv_records())
    write_report(tmp_path)
    before = (tmp_path / CSV_FILE).read_text()

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", broken)
    with pytest.raises(OSError, match="No space left"):
        write_report(tmp_path)
    assert (tmp_path / CSV_FILE).read_text() == before
    assert sorted(p.name for p in tmp_path.glob("*results.csv*")) == [CSV_FILE]


def test_load_returns_the_csv_rows_as_a_dataframe(tmp_path):
    pandas = pytest.importorskip("pandas")
    write(tmp_path, csv_records())
    write_report(tmp_path)
    frame = load(tmp_path)
    assert isinstance(frame, pandas.DataFrame) and report.load is load
    expected = pandas.read_csv(tmp_path / CSV_FILE)
    assert list(frame.columns) == list(expected.columns)
    assert frame["acc_b"].tolist() == expected["acc_b"].tolist() == [0.7, 0.8, 0.81, 0.75]
    assert frame.groupby("label")["acc_b"].mean()["full_ft"] == pytest.approx(0.805)


def test_load_without_pandas_returns_a_list_of_dicts(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # None makes `import pandas` fail
    write(tmp_path, csv_records())
    rows = load(tmp_path)
    assert isinstance(rows, list) and len(rows) == 4
    assert rows[3]["label"] == "lp_ft (lp_fraction=0.2)" and rows[3]["selected_lr"] == 0.003
    assert rows[0]["acc_ood"] is None and rows[0]["k"] == 2
    assert list(rows[0])[:3] == ["experiment", "a", "b"]
    assert not (tmp_path / CSV_FILE).exists()  # load reads results.json, writes nothing


def test_load_leaves_out_what_the_report_leaves_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pandas", None)
    records = [run("full_ft", 0, 0.8), run("full_ft", 1, 0.8, fingerprint="f0")]
    records[1]["finished_at"] = "2026-11-01T00:00:00"
    write(tmp_path, records)
    write(tmp_path / "runs" / ".stale", [run("full_ft", 2, 0.1)])
    assert [row["seed"] for row in load(tmp_path)] == [0]
    assert "jaxtl: warning: strategies full_ft" in capsys.readouterr().err
