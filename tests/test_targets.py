"""`cifras targets`: issue #5's targets judged from real evaluations, in one table."""

import json

import cv2
import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from tasks.settings import Target, load_settings
from tasks.targets import command_for, judge, reference_score, render_targets

runner = CliRunner()


def test_a_target_is_met_only_by_a_measured_figure_at_or_over_its_bound():
    t = Target(name="Danish rows val", kind="cells", data="d", labels="d/labels.csv",
               at_least={"number_accuracy": 0.9, "accuracy_when_ok": 0.99})
    rows = judge(t, {"number_accuracy": 0.9, "accuracy_when_ok": 0.9899, "n": 5}, "cmd")
    assert [(r.metric, r.value, r.met) for r in rows] == [("number_accuracy", 0.9, True),
                                                          ("accuracy_when_ok", 0.9899, False)]
    missing = judge(t, None, "cmd", "data not found")
    assert [r.met for r in missing] == [False, False] and all(r.value is None for r in missing)
    assert [r.met for r in judge(t, {"number_accuracy": 0.95}, "cmd")] == [True, False]  # no ok cells
    table = render_targets({"model": "digit-cnn/v7", "rows": [r.as_dict() for r in rows + missing]})
    assert "1 of 4 met" in table and "NOT MET" in table and "data not found" in table


def test_the_command_reproduces_one_target_alone():
    cells = Target(name="ORAND val", kind="cells", data="orand", labels="orand/labels.csv", split="val")
    assert command_for(cells, "D/orand", "D/orand/labels.csv") == (
        "cifras evaluate-cells --images D/orand --labels D/orand/labels.csv --split val --json")
    digits = Target(name="USPS test", kind="digits", data="usps/usps.npz", split="test")
    assert command_for(digits, "my data/usps.npz", None) == (
        "cifras evaluate-digits 'my data/usps.npz' --split test --json")
    ref = Target(name="reference", kind="reference", data="t.jpg")
    assert command_for(ref, "D/t.jpg", None) == "cifras read-telegram D/t.jpg --json"


def test_reference_score_forbids_only_wrong_cells_marked_ok():
    truth = {"a": 1, "b": 22, "c": 3, "d": 0}
    cells = {"a": {"value": 1, "status": "ok"}, "b": {"value": 27, "status": "review"},
             "c": {"value": 3, "status": "review"}}  # d: not read at all
    score = reference_score(cells, truth)
    assert (score["right"], score["review"], score["wrong_ok"]) == (2, 3, [])
    assert score["right_or_review"] == 1.0 and score["accuracy"] == 0.5
    cells["b"]["status"] = "ok"
    assert reference_score(cells, truth)["wrong_ok"] == ["b"]
    assert reference_score(cells, truth)["right_or_review"] == 0.75


@pytest.mark.slow
def test_targets_run_the_evaluations_and_log_one_table(use_registry, mnist_sample, shared_data, tmp_path,
                                                       monkeypatch):
    x, y = mnist_sample
    root = tmp_path / "shared"
    root.mkdir()
    np.savez(root / "digits.npz", x_val=x[:100], y_val=y[:100])
    cells = root / "cells"
    cells.mkdir()
    rows = ["file,label"]
    for i in range(20):
        cell = np.full((70, 140), 235, np.uint8)
        cell[15:55, 50:90] = np.minimum(cell[15:55, 50:90], cv2.resize(255 - x[i], (40, 40)))
        cv2.imwrite(str(cells / f"{i}.png"), cell)
        rows.append(f"{i}.png,{y[i]}")
    (cells / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "telegram_reference").symlink_to(shared_data / "telegram_reference")
    targets = [
        {"name": "digits", "kind": "digits", "data": "digits.npz", "split": "val",
         "at_least": {"accuracy": 0.0, "f1_macro": 1.01}},
        {"name": "cells", "kind": "cells", "data": "cells", "labels": "cells/labels.csv",
         "at_least": {"number_accuracy": 0.0}},
        {"name": "reference", "kind": "reference", "data": "telegram_reference/santa_fe_2021_mesa_0001.jpg",
         "at_least": {"right_or_review": 0.0}},
        {"name": "absent", "kind": "digits", "data": "nowhere.npz", "at_least": {"accuracy": 0.5}},
    ]
    monkeypatch.setenv("CIFRAS_SHARED_DATA", str(root))
    monkeypatch.setenv("CIFRAS_TARGETS", json.dumps(targets))
    out = runner.invoke(app, ["targets", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout.strip().splitlines()[-1])
    got = {(r["target"], r["metric"]): r for r in result["rows"]}
    assert list(got) == [("digits", "accuracy"), ("digits", "f1_macro"), ("cells", "number_accuracy"),
                         ("reference", "right_or_review"), ("absent", "accuracy")]
    assert result["model"] == "digit-cnn/v1" and result["met"] is False
    assert got["digits", "accuracy"]["met"] and not got["digits", "f1_macro"]["met"]  # over 1: never
    assert got["absent", "accuracy"]["value"] is None and "not found" in got["absent", "accuracy"]["note"]
    assert "31 cells" in got["reference", "right_or_review"]["note"]
    assert got["cells", "number_accuracy"]["command"].startswith(f"cifras evaluate-cells --images {cells}")

    # each figure is the one its own evaluation logged, and the table is one run beside them
    client = MlflowClient(load_settings().mlflow_tracking_uri)
    evals = client.search_runs([client.get_experiment_by_name("digit-eval").experiment_id],
                               max_results=1, order_by=["start_time DESC"])
    assert evals[0].data.metrics["accuracy"] == pytest.approx(got["digits", "accuracy"]["value"])
    run = client.get_run(result["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "targets"
    assert run.data.metrics["digits.f1_macro"] == pytest.approx(got["digits", "f1_macro"]["value"])
    assert run.data.metrics["targets_met"] == sum(r["met"] for r in result["rows"])

    bad = runner.invoke(app, ["targets", "--only", "nonesuch"])
    assert bad.exit_code == 2 and "unknown target" in bad.output


def test_a_scan_without_its_transcription_is_one_clear_error(tmp_path):
    from tasks.errors import CifrasError
    from tasks.reference import load_reference, transcribed_values

    scan = tmp_path / "mesa.jpg"
    scan.write_bytes(b"not read")
    with pytest.raises(CifrasError, match=r"no transcription mesa\.json beside mesa\.jpg"):
        transcribed_values(scan)
    with pytest.raises(CifrasError, match="no transcription"):
        load_reference(tmp_path)
