"""Promotion rule, weak labels and the fine-tuning flow, against a real MLflow registry and a
real Prefect API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from tasks.promotion import Scores, decide
from tasks.weak_labels import WeakDigits, load_shards, shard_bytes


def test_promotion_needs_the_mnist_floor_even_for_the_first_champion():
    d = decide(Scores(0.985, 0.99), None, 0.99)
    assert not d.promote and d.basis == "floor"
    d = decide(Scores(0.995, 0.985), None, 0.99)  # macro F1 counts too
    assert not d.promote
    assert decide(Scores(0.991, 0.991), None, 0.99).promote


def test_promotion_on_validation_needs_strictly_more_numbers_right():
    champ = Scores(0.995, 0.995, 0.80)
    assert decide(Scores(0.991, 0.991, 0.81), champ).promote  # worse on MNIST is fine above the floor
    tie = decide(Scores(0.999, 0.999, 0.80), champ)
    assert not tie.promote and tie.basis == "validation"
    assert not decide(Scores(0.989, 0.989, 0.99), champ).promote  # below the floor


def test_promotion_without_validation_set_compares_mnist():
    d = decide(Scores(0.993, 0.993, None), Scores(0.992, 0.992, None))
    assert d.promote and d.basis == "mnist"
    assert not decide(Scores(0.992, 0.992), Scores(0.992, 0.992)).promote


def test_shards_exclude_validation_scans_and_refuse_unhashed(tmp_path: Path):
    x = np.zeros((4, 28, 28), np.uint8)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "chunk-00000.npz").write_bytes(
        shard_bytes(WeakDigits(x, np.array([1, 2, 3, 4]), np.array(["h1", "h1", "h2", "h3"]))))
    np.savez(tmp_path / "a" / "numbers.npz", x=np.zeros((2, 96, 256), np.uint8), y=np.array([5, 6]))
    weak, files = load_shards([tmp_path.as_uri()], None)
    assert len(weak) == 4 and len(files) == 1  # the numbers shard is not digits
    kept = weak.without({"h1"})
    assert kept.y.tolist() == [3, 4] and set(kept.scan) == {"h2", "h3"}
    np.savez(tmp_path / "a" / "old.npz", x=x, y=np.array([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="no scan hashes"):
        load_shards([tmp_path.as_uri()], None)



def test_a_scan_read_by_several_runs_counts_once_from_its_newest_shard_when_asked(tmp_path: Path):
    """A forced re-read exports a scan's digits again under the new run; by default both copies
    load (the documented model chain was trained that way), with `newest_per_scan` only the
    newest run's. A file given twice still loads twice (a deliberate weight)."""
    import os

    x = np.zeros((3, 28, 28), np.uint8)
    runs = {"run-old": ([1, 2, 7], ["h1", "h1", "h2"], 1_000), "run-new": ([1, 3], ["h1", "h1"], 2_000)}
    for run, (labels, scans, mtime) in runs.items():
        shard = tmp_path / "datasets" / run / "digits" / "chunk-00000.npz"
        shard.parent.mkdir(parents=True)
        shard.write_bytes(shard_bytes(WeakDigits(x[: len(labels)], np.array(labels), np.array(scans))))
        os.utime(shard, (mtime, mtime))
    root = (tmp_path / "datasets").as_uri()
    both, _ = load_shards([root], None)
    assert sorted(both.y.tolist()) == [1, 1, 2, 3, 7]
    newest, files = load_shards([root], None, newest_per_scan=True)
    assert sorted(newest.y.tolist()) == [1, 3, 7] and len(files) == 2  # h1 from run-new, h2 kept
    old_file = (tmp_path / "datasets" / "run-old" / "digits" / "chunk-00000.npz").as_uri()
    twice, _ = load_shards([old_file, old_file], None, newest_per_scan=True)
    assert len(twice) == 6

def test_training_mix_and_fine_tune_keep_the_architecture_and_the_base():
    from tasks.fine_tuning import fine_tune, training_mix
    from tasks.model import EXPECTED_PARAMS, build_mnist_convnet

    rng = np.random.default_rng(0)
    xw, yw = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), rng.integers(0, 10, 50)
    xm, ym = rng.integers(0, 256, (500, 28, 28), dtype=np.uint8), rng.integers(0, 10, 500)
    x, y = training_mix(xw, yw, xm, ym, 2.0, 0)
    assert len(y) == len(x) == 150  # every weak digit plus twice as many MNIST ones
    weak_rows = {xw[i].tobytes(): int(yw[i]) for i in range(50)}
    found = [(x[i].tobytes(), int(y[i])) for i in range(150) if x[i].tobytes() in weak_rows]
    assert len(found) == 50 and all(weak_rows[k] == v for k, v in found)  # labels travel with x
    base = build_mnist_convnet(seed=0)
    before = [w.copy() for w in base.get_weights()]
    tuned, history = fine_tune(base, x, y, epochs=1, batch_size=32, learning_rate=1e-3, seed=0)
    assert tuned.count_params() == EXPECTED_PARAMS
    assert all(np.array_equal(a, b) for a, b in zip(before, base.get_weights(), strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(before, tuned.get_weights(), strict=True))
    assert len(history["loss"]) == 1


def _digit(value: int) -> np.ndarray:
    """A crude upright stroke digit, 28x28 uint8 with ink 255: 1 a bar, 0 a ring."""
    import cv2

    img = np.zeros((28, 28), np.uint8)
    if value == 1:
        img[4:24, 12:15] = 255
    else:
        cv2.ellipse(img, (14, 14), (8, 10), 0, 0, 360, 255, 2)
    return img


def test_a_squeezed_pair_holds_both_digits_side_by_side_in_one_digit_frame():
    from tasks.fine_tuning import squeezed_pairs

    x = np.stack([_digit(1), _digit(0), _digit(0)])  # two rings side by side: 1.6x as wide as tall
    pairs = squeezed_pairs(x, 20, seed=3)
    assert pairs.shape == (20, 28, 28) and pairs.dtype == np.uint8
    for p in pairs:
        cols = np.flatnonzero(p.max(axis=0) > 64)
        rows = np.flatnonzero(p.max(axis=1) > 64)
        height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert max(height, width) >= 19  # framed as MNIST frames a digit: 20 px
        assert width <= 1.25 * height  # squeezed into one digit's width, not two side by side
        # two marks, one on each side of the middle of the ink
        left, right = p[:, cols[0] : cols[0] + width // 2], p[:, cols[0] + width // 2 : cols[-1] + 1]
        assert (left > 64).sum() > 15 and (right > 64).sum() > 15
    assert np.array_equal(pairs, squeezed_pairs(x, 20, seed=3))  # the seed decides
    assert len(squeezed_pairs(x[:1], 5, seed=3)) == 0  # one digit makes no pair


def test_pairs_train_towards_the_uniform_distribution_with_the_same_architecture():
    from tasks.fine_tuning import fine_tune, squeezed_pairs, with_pairs
    from tasks.model import EXPECTED_PARAMS, build_mnist_convnet

    x = np.stack([_digit(1), _digit(0)] * 20)
    y = np.array([1, 0] * 20)
    pairs = squeezed_pairs(x, 10, seed=0)
    xs, soft = with_pairs(x, y, pairs, seed=0)
    assert xs.shape == (50, 28, 28) and soft.shape == (50, 10)
    assert np.allclose(soft.sum(axis=1), 1.0)
    # each digit keeps its own one-hot target, each pair gets 0.1 everywhere
    for img, target in zip(xs, soft, strict=True):
        if any(np.array_equal(img, p) for p in pairs):
            assert np.allclose(target, 0.1)
        else:
            assert target[1 if np.array_equal(img, _digit(1)) else 0] == 1.0
    tuned, history = fine_tune(build_mnist_convnet(seed=0), xs, soft, epochs=1, batch_size=16,
                               learning_rate=1e-3, seed=0)
    assert tuned.count_params() == EXPECTED_PARAMS and len(history["loss"]) == 1


@pytest.mark.slow
def test_fine_tune_flow_judges_on_validation_and_promotes_only_by_the_rule(
    cifras_env: Path, mnist_npz: Path, prefect_server, monkeypatch
):
    from flows.fine_tune import fine_tune_flow
    from flows.generate import generate_flow
    from flows.ingest import ingest_flow
    from flows.train import train_flow
    from tasks.settings import load_settings

    monkeypatch.setenv("CIFRAS_MNIST_PATH", str(mnist_npz))
    monkeypatch.setenv("CIFRAS_PROMOTION__MIN_MNIST_ACCURACY", "0")
    base = train_flow(epochs=1, limit=3000)
    assert base["promoted"] and base["promotion_reason"] == "no champion yet"

    s = load_settings()
    # the validation telegrams sit among the scans, so the nightly run reads them too and
    # exports their digits: fine-tuning must drop those
    val_uri = f"{s.scans_uri}/validation"
    monkeypatch.setenv("CIFRAS_PROMOTION__VALIDATION_URI", val_uri)
    generate_flow(count=3, seed=71, out=val_uri, digits="mnist")
    generate_flow(count=6, seed=72, out=f"{s.scans_uri}/day1", digits="mnist")
    ingest_flow()
    datasets = Path(s.data_dir) / "exports" / "datasets"
    weak_all, _ = load_shards([datasets.as_uri()], s)
    assert len(weak_all) > 100

    from tasks.errors import CifrasError

    empty = Path(s.data_dir) / "no-shards"
    empty.mkdir()
    with pytest.raises(CifrasError, match="no weakly labelled digits"):
        fine_tune_flow([empty.as_uri()], epochs=1)  # a user error, before any run is logged

    monkeypatch.setenv("CIFRAS_PROMOTION__MIN_MNIST_ACCURACY", "0.9999")  # nothing reaches it
    refused = fine_tune_flow([datasets.as_uri()], epochs=1)
    assert 0 < refused["dropped_validation_digits"] < len(weak_all)
    assert refused["weak_digits"] + refused["dropped_validation_digits"] == len(weak_all)
    assert not refused["promoted"] and "below the floor" in refused["promotion_reason"]
    client = MlflowClient(s.mlflow_tracking_uri)
    assert str(client.get_model_version_by_alias("digit-cnn", "champion").version) == base["version"]
    assert str(client.get_model_version_by_alias("digit-cnn", "challenger").version) == refused["version"]

    monkeypatch.setenv("CIFRAS_PROMOTION__MIN_MNIST_ACCURACY", "0")
    tuned = fine_tune_flow([datasets.as_uri()], epochs=1)
    cand, champ = tuned["validation_number_accuracy"], tuned["champion_validation_number_accuracy"]
    assert cand is not None and champ is not None
    assert tuned["promoted"] == (cand > champ)
    alias = str(client.get_model_version_by_alias("digit-cnn", "champion").version)
    assert alias == (tuned["version"] if cand > champ else base["version"])

    run = client.get_run(tuned["run_id"])
    assert run.data.params["base_model"] == f"digit-cnn/v{base['version']}"
    assert run.data.metrics["validation_number_accuracy"] == pytest.approx(cand)
    path = client.download_artifacts(tuned["run_id"], "promotion_comparison.json")
    comparison = json.loads(Path(path).read_text())
    assert comparison["validation"]["telegrams"] == 3
    assert comparison["decision"]["promote"] == tuned["promoted"]
    assert comparison["champion"]["version"] == base["version"]

    # an existing version judged by the same rule (`cifras promote`)
    from flows.promote import promote_flow

    judged = promote_flow(f"models:/digit-cnn/{refused['version']}")
    now = str(client.get_model_version_by_alias("digit-cnn", "champion").version)
    if judged.get("reason") == "already the champion":
        pytest.fail("the refused version cannot be the champion")
    assert judged["promoted"] == (judged["validation_number_accuracy"]
                                  > judged["champion_validation_number_accuracy"])
    assert (now == refused["version"]) == judged["promoted"]

    # the reliability table behind `cifras calibrate`
    from tasks.model_tasks import validation_set_for, vs_template_and_options
    from tasks.tracking import load_keras_model, resolve_model
    from tasks.validation import recommend_threshold, reliability

    vs = validation_set_for(load_settings())
    tpl, opt = vs_template_and_options(load_settings())
    rows = reliability(vs, load_keras_model(resolve_model(client, "models:/digit-cnn@champion")),
                       tpl, opt, (0.0, 0.5, 0.9, 0.999))
    shares = [r["ok_share"] for r in rows]
    assert shares == sorted(shares, reverse=True) and shares[0] > shares[-1]
    assert len({r["number_accuracy"] for r in rows}) == 1  # the threshold only changes statuses
    rec = recommend_threshold(rows, 0.0)
    assert rec is not None and rec["ok_threshold"] == 0.0


@pytest.mark.slow
def test_harvest_labels_digits_only_where_the_count_matches(use_registry, mnist_sample, tmp_path):
    import cv2
    from typer.testing import CliRunner

    from flows.cli import app

    x, y = mnist_sample
    rows = ["file,label"]
    for i in range(20):  # two MNIST digits side by side in a ruled cell
        cell = np.full((80, 150), 235, np.uint8)
        for j, k in enumerate((2 * i, 2 * i + 1)):
            cell[20:60, 30 + 45 * j : 70 + 45 * j] = np.minimum(
                cell[20:60, 30 + 45 * j : 70 + 45 * j], cv2.resize(255 - x[k], (40, 40)))
        cv2.imwrite(str(tmp_path / f"{i}.png"), cell)
        label = int(f"{y[2 * i]}{y[2 * i + 1]}") if y[2 * i] else 100 + int(y[2 * i + 1])
        rows.append(f"{i}.png,{label if i % 5 else 123}")  # every fifth label has 3 digits
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = CliRunner().invoke(app, ["harvest-cells", "--images", str(tmp_path), "--labels",
                                   str(tmp_path / "labels.csv"), "--out", (tmp_path / "shard").as_uri(),
                                   "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["cells"] == 20 and report["used"] + report["skipped"] == 20
    assert report["used"] >= 10 and report["skipped"] >= 4  # the 3-digit labels cannot match
    weak, _ = load_shards([(tmp_path / "shard").as_uri()], None)
    assert len(weak) == report["digits"] == 2 * report["used"]
    assert len(set(weak.scan)) == report["used"]  # each digit names the image it came from
    truth = {f"{y[2 * i]}{y[2 * i + 1]}" for i in range(20)}
    pairs = {"".join(str(d) for d in weak.y[weak.scan == h]) for h in set(weak.scan)}
    assert pairs <= truth  # labels come from the CSV, in reading order


def test_forced_alignment_picks_the_split_that_fits_the_label():
    from tasks.segment import Segmentation
    from tasks.weak_labels import align_to_label

    # one blob: read whole it is a confident "4"; split in two it is "2" and "6"
    seg = Segmentation("digits", groups=[[[0], [1, 2]]])
    probs = np.full((3, 10), 0.01)
    probs[0, 4], probs[1, 2], probs[2, 6], probs[2, 8] = 0.9, 0.4, 0.5, 0.3
    assert align_to_label(seg, probs, 26) == [1, 2]
    assert align_to_label(seg, probs, 4) == [0]
    assert align_to_label(seg, probs, 7) is None  # nothing reads as a 7: a wrong label
    assert align_to_label(seg, probs, 123) is None  # no segmentation has 3 digits
    assert align_to_label(Segmentation("dash"), np.zeros((0, 10)), 5) is None


def test_harvest_takes_each_cell_as_the_reader_reads_it(use_registry):
    """A number joined to its underline is read without the line; harvesting sees the same
    segmentation, so its digits are labelled instead of the cell being skipped as a dash."""
    from tasks import tracking
    from tasks.cell_reader import read_cells
    from tasks.settings import load_settings
    from tasks.weak_labels import harvest_cells
    from tests.test_evaluate_cells import underlined_tall_cells

    settings = load_settings()
    ref = tracking.resolve_model(tracking.configure_mlflow(settings), "models:/digit-cnn@champion")
    model = tracking.load_reader_model(ref, "keras")
    cells = underlined_tall_cells()
    readings = read_cells(cells, model, 6, 0.99)
    read = [r.value for r in readings if r.digits.isdigit()]
    assert len(read) == len(cells)
    weak, report = harvest_cells(cells, read, model, 6)
    assert (report["used"], report["aligned"], report["skipped"]) == (len(cells), 0, 0)
    assert len(weak) == sum(len(str(v)) for v in read)
