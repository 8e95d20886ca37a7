"""The benchmark's inference comparison runs every backend on the same inputs and checks that
they agree; speeds are printed by `cifras bench`, never asserted."""

import os

import pytest

from flows.bench import inference_backends
from tasks import tracking
from tasks.model import to_model_input
from tasks.settings import load_settings


@pytest.mark.slow
def test_backends_agree_on_every_digit(use_registry, mnist_sample):
    settings = load_settings()
    client = tracking.configure_mlflow(settings)
    model = tracking.load_keras_model(tracking.resolve_model(client, settings.evaluate.model_uri))
    x, _ = mnist_sample
    ref = tracking.resolve_model(client, settings.evaluate.model_uri)
    out = inference_backends(model, to_model_input(x), batch=128,
                             onnx_model=tracking.load_reader_model(ref, "onnx"),
                             pipeline_model=tracking.load_reader_model(ref, "auto"))
    assert set(out) == {"keras_predict", "keras_predict_default", "keras_direct", "onnxruntime",
                        "onnx_winograd", "pipeline"}
    assert out["keras_direct"]["same_argmax"] is True
    assert out["onnxruntime"].get("same_argmax") is True, out["onnxruntime"]
    assert out["onnx_winograd"].get("same_argmax") is True, out["onnx_winograd"]  # built here
    assert out["pipeline"]["backend"] == "winograd" and out["pipeline"]["same_argmax"] is True
    assert out["keras_predict_default"]["same_argmax"] is True
    assert all(v["digits_per_s"] > 0 for v in out.values())



def test_an_export_that_fails_keeps_the_other_backends_figures():
    """A model the Winograd graph cannot be built for (other layer shapes): that backend shows
    its error, and Keras' own ONNX export is still timed and checked."""
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    x = np.random.default_rng(0).random((64, 28, 28, 1)).astype(np.float32)
    model.predict(x[:1], verbose=0)  # Keras exports only a model that has run
    out = inference_backends(model, x, batch=32, reps=1)
    assert "not mnist_convnet" in out["onnx_winograd"]["error"]
    assert out["onnxruntime"]["same_argmax"] is True and out["onnxruntime"]["digits_per_s"] > 0
    assert out["keras_direct"]["same_argmax"] is True

def test_api_server_cpu_counts_only_this_process_prefect_server_child():
    import os
    import subprocess
    import sys
    import time

    from flows.bench import _api_server_cpu_s

    marker = f"cifras-test-server-{os.getpid()}"  # the suite may run a real temporary server
    assert _api_server_cpu_s(marker.encode()) is None
    burn = "import time\nt = time.time()\nwhile time.time() - t < 5: pass"
    busy = subprocess.Popen([sys.executable, "-c", burn, marker])
    other = subprocess.Popen([sys.executable, "-c", burn, "something.else"])
    try:
        time.sleep(1.0)

        def own(pid: int) -> float:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        cpu, mine, theirs = _api_server_cpu_s(marker.encode()), own(busy.pid), own(other.pid)
        assert cpu is not None and mine > 0 and theirs > 0
        assert abs(cpu - mine) < 0.05  # the server-like child alone, not the other one
    finally:
        busy.kill()
        other.kill()
        busy.wait()
        other.wait()


def _ratio_of_rounded(wall: float, decode: float, ratio: float) -> bool:
    """Whether `ratio` (rounded to 0.01) is wall / decode, both given rounded to 0.01 s."""
    return wall / (decode + 0.006) - 0.01 <= ratio <= wall / max(decode - 0.006, 1e-3) + 0.01


@pytest.mark.slow
def test_bench_reads_a_few_telegrams_and_brackets_the_ingest_with_decode_passes(reading_env, tmp_path):
    from flows.bench import run_bench

    out = run_bench(count=3, data_dir=str(tmp_path / "bench"), baselines=False)
    for key in ("telegrams_per_s", "digits_per_s", "decode_only_s", "wall_s", "stage_s",
                "orchestration_overhead", "peak_rss_mb"):
        assert out[key] is not None, key
    assert out["telegrams"] == 3 and out["digits_per_s"] > 0
    before, after = out["decode_only_passes_s"]
    assert before > 0 and after > 0
    assert out["decode_only_s"] == pytest.approx((before + after) / 2, abs=0.011)
    assert _ratio_of_rounded(out["wall_s"], out["decode_only_s"], out["wall_over_decode"])
    assert {"decode", "register", "segment", "infer", "compose", "persist"} <= set(out["stage_s"])
    assert 0 <= out["orchestration_overhead"] < 1
    assert "repeats" not in out
    assert out["machine"]["cores"] == os.cpu_count() and out["machine"]["cpu"]


def test_bench_repeats_report_the_median_run_and_every_repeat(reading_env, tmp_path):
    from flows.bench import run_bench

    out = run_bench(count=2, data_dir=str(tmp_path / "bench"), baselines=False, repeat=3)
    reps = out["repeats"]
    assert len(reps) == 3 and all(r["wall_s"] > 0 and r["decode_only_s"] > 0 for r in reps)
    for r in reps:  # each ingest over the mean of the decode passes around it (both rounded)
        assert _ratio_of_rounded(r["wall_s"], r["decode_only_s"], r["wall_over_decode"])
    ratios = sorted(r["wall_over_decode"] for r in reps)
    assert out["wall_over_decode"] == ratios[1]  # the median repeat is the one reported
    median = next(r for r in reps if r["wall_over_decode"] == ratios[1])
    assert out["wall_s"] == median["wall_s"] and out["decode_only_s"] == median["decode_only_s"]
    # each run's digits are counted before the next forced run replaces its readings
    assert out["digits_per_s"] > 0 and all(r["digits_per_s"] > 0 for r in reps)


@pytest.mark.slow
def test_after_repeats_tesseract_reads_the_cells_that_are_still_stored(reading_env, tmp_path, monkeypatch):
    """The median run's readings are replaced by the later repeats: the baseline must still
    find the cells and their labels (session 16 printed a baseline of 0 cells)."""
    from flows import bench
    from tasks import tesseract

    if tesseract.tesseract_binary() is None:
        pytest.skip("tesseract not installed")
    # the inference comparison is tested above and costs a minute on all of MNIST test
    monkeypatch.setattr(bench, "inference_backends", lambda *a, **k: {"onnxruntime": {}})
    # floors growing tenfold make the ratios fall run after run: the median is the second run,
    # never the last, whose readings alone are still stored
    floors = iter([(10.0**k, 10.0**k) for k in range(4)])
    monkeypatch.setattr(bench, "_decode_floor", lambda files: next(floors))
    out = bench.run_bench(count=2, data_dir=str(tmp_path / "bench"), baselines=True, repeat=3)
    assert out["wall_s"] == out["repeats"][1]["wall_s"]
    assert "error" not in out["tesseract"], out["tesseract"]
    assert out["tesseract"]["cells"] == 2 * 31  # every cell of both scans has an official result
    assert 0 <= out["tesseract"]["number_accuracy"] <= 1
    assert out["tesseract"]["cifras_number_accuracy"] is not None


INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512_vnni avx512_bf16 amx_tile
processor\t: 1
model name\t: something else
flags\t\t: fpu
"""
AMD = """processor\t: 0
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_machine_info_names_the_cpu_and_its_vector_instructions():
    from flows.bench import machine_info, render

    intel = machine_info(INTEL, 2)
    assert intel == {"cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "family_model": "6/143",
                     "cores": 2,
                     "vector": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"]}
    amd = machine_info(AMD, 2)
    assert amd["cpu"] == "AMD EPYC" and amd["family_model"] == "25/1" and amd["vector"] == ["avx2", "fma"]
    assert machine_info("", None) == {"cpu": "unknown", "family_model": None, "cores": None, "vector": []}
    row = {"telegrams": 1, "telegrams_per_s": 1.0, "digits_per_s": 1.0, "decode_only_s": 1.0,
           "wall_s": 4.0, "wall_over_decode": 4.0, "orchestration_overhead": 0.05, "peak_rss_mb": 1.0,
           "digit_accuracy": 1.0, "number_accuracy": 1.0, "load_average": [0.0], "prepare_threads": 2,
           "work_s": 3.8, "stage_s": {}, "machine": amd}
    assert "AMD EPYC (25/1), 2 cores, avx2 fma" in render(row)
