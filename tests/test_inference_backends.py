"""The reader's inference backend: ONNX Runtime when the registered version carries a verified
ONNX export, Keras otherwise (older versions), with the same argmax either way."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from tasks import tracking
from tasks.errors import CifrasError
from tasks.inference import OnnxModel, backend_of, choose_backend, predict_proba
from tasks.ingest_tasks import busy_seconds
from tasks.model import to_model_input
from tasks.settings import load_settings


def test_choose_backend():
    both = {"onnx": True, "winograd": True}
    assert choose_backend("auto", both, runtime=True) == "winograd"
    assert choose_backend("auto", {"onnx": True, "winograd": False}, runtime=True) == "onnx"
    assert choose_backend("auto", {"onnx": True}, runtime=True) == "onnx"  # registered before Winograd
    assert choose_backend("auto", {"onnx": False}, runtime=True) == "keras"
    assert choose_backend("auto", {}, runtime=True) == "keras"
    assert choose_backend("auto", both, runtime=False) == "keras"
    assert choose_backend("keras", both, runtime=True) == "keras"
    assert choose_backend("onnx", both, runtime=True) == "onnx"
    assert choose_backend("onnx", {"onnx": False}, runtime=True) == "onnx"
    assert choose_backend("winograd", {"winograd": False}, runtime=True) == "winograd"
    with pytest.raises(RuntimeError, match="no ONNX export"):
        choose_backend("onnx", {}, runtime=True)
    with pytest.raises(RuntimeError, match="no Winograd ONNX export"):
        choose_backend("winograd", {"onnx": True}, runtime=True)
    with pytest.raises(RuntimeError, match="not installed"):
        choose_backend("winograd", both, runtime=False)


def test_busy_seconds_is_the_union_of_spans():
    assert busy_seconds([]) == 0
    assert busy_seconds([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == pytest.approx(4.0)


def _champion():
    settings = load_settings()
    client = tracking.configure_mlflow(settings)
    return client, tracking.resolve_model(client, settings.evaluate.model_uri)


@pytest.mark.slow
def test_registered_version_reads_with_its_verified_onnx_exports(use_registry, mnist_sample):
    client, ref = _champion()
    exports = tracking.onnx_exports(ref)
    assert set(exports) == {"onnx", "winograd"} and all(e.verified for e in exports.values())
    mv = client.get_model_version(ref.name, ref.version)
    metrics = client.get_run(mv.run_id).data.metrics
    for kind in ("onnx", "winograd"):
        assert mv.tags[f"{kind}_argmax_agreement"] == "1.000000"
        assert metrics[f"{kind}_argmax_agreement"] == 1.0
        assert metrics[f"{kind}_max_abs_prob_diff"] < 1e-4
    logged = {a.path for a in client.list_artifacts(mv.run_id, "onnx")}
    assert logged == {"onnx/model.onnx", "onnx/winograd.onnx"}

    reader = tracking.load_reader_model(ref, "auto")
    assert isinstance(reader, OnnxModel) and backend_of(reader) == "winograd"  # the fastest verified
    assert tracking.load_reader_model(ref, "auto") is reader  # cached per process
    plain = tracking.load_reader_model(ref, "onnx")
    assert backend_of(plain) == "onnx"
    x = to_model_input(mnist_sample[0])
    keras_probs = predict_proba(tracking.load_keras_model(ref), x, 128)
    for model in (reader, plain):
        probs = predict_proba(model, x, 128)
        assert (probs.argmax(1) == keras_probs.argmax(1)).all()
        assert np.abs(probs - keras_probs).max() < 1e-4
    # runs spread over the session's thread pool come back whole and in order
    assert len(x) % reader.sub_batch != 0
    workers = reader.workers
    try:
        reader.workers = 1
        serial = predict_proba(reader, x, 1000)
        reader.workers = 3
        assert np.array_equal(predict_proba(reader, x, 1000), serial)
    finally:
        reader.workers = workers
    assert backend_of(tracking.load_reader_model(ref, "keras")) == "keras"


@pytest.mark.slow
def test_a_version_without_onnx_falls_back_to_keras(trained_registry: Path, tmp_path: Path, monkeypatch):
    # a copy of the registry database (artifacts stay where they are), with the version's ONNX
    # tags removed: a version registered before exports existed
    data = tmp_path / "old-registry"
    data.mkdir()
    shutil.copy(trained_registry / "mlflow.db", data / "mlflow.db")
    monkeypatch.setenv("CIFRAS_DATA_DIR", str(data))
    client, ref = _champion()
    for kind in ("winograd", "onnx"):
        for tag in ("artifact", "verified", "argmax_agreement", "checked_on"):
            client.delete_model_version_tag(ref.name, ref.version, f"{kind}_{tag}")
        if kind == "winograd":  # registered before the Winograd graph: the plain export
            assert set(tracking.onnx_exports(ref)) == {"onnx"}
            assert backend_of(tracking.load_reader_model(ref, "auto")) == "onnx"
            tracking._model_cache.clear()  # readers are cached per version; this one's tags changed
    assert tracking.onnx_exports(ref) == {}
    assert backend_of(tracking.load_reader_model(ref, "auto")) == "keras"
    with pytest.raises(CifrasError, match="no ONNX export"):
        tracking.load_reader_model(ref, "onnx")
    with pytest.raises(CifrasError, match="no Winograd ONNX export"):
        tracking.load_reader_model(ref, "winograd")


class _Constant:
    """A stand-in model answering the same probabilities for any input, and counting inputs."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs, self.seen = probs, 0

    def __call__(self, x, training=False):
        self.seen += len(x)
        return np.tile(self.probs, (len(x), 1))


def test_second_look_rereads_only_unsure_digits_and_averages_seven_views():
    from tasks.inference import second_look

    rng = np.random.default_rng(0)
    x = rng.random((3, 28, 28, 1)).astype(np.float32)
    probs = np.array([[0.99] + [0.01 / 9] * 9, [0.5, 0.4] + [0.1 / 8] * 8, [0.0] * 9 + [1.0]], np.float32)
    other = np.eye(10, dtype=np.float32)[1]  # what the moved views say
    model = _Constant(other)
    out = second_look(model, x, probs, below=0.9)
    assert model.seen == 6  # one unsure digit, six moved views
    np.testing.assert_array_equal(out[[0, 2]], probs[[0, 2]])
    np.testing.assert_allclose(out[1], (probs[1] + 6 * other) / 7, rtol=1e-6)
    assert out[1].argmax() == 1 and out[1].sum() == pytest.approx(1.0)
    model.seen = 0
    np.testing.assert_array_equal(second_look(model, x, probs, below=0.0), probs)
    assert model.seen == 0
    # only among the digits still in play: an unsure digit outside them keeps its one reading
    both_unsure = probs.copy()
    both_unsure[0] = probs[1]
    out = second_look(model, x, both_unsure, below=0.9, among=np.array([False, True, True]))
    assert model.seen == 6
    np.testing.assert_array_equal(out[0], both_unsure[0])
    assert out[1].argmax() == 1


def test_keras_models_run_one_compiled_graph_with_dropout_off():
    """The Keras path (versions without exports, and the bench's compiled call) is one graph per
    model for any batch size, computing what the eager call computes with `training=False`
    (dropout off), and it goes when its model goes."""
    import gc
    import weakref

    from tasks.inference import compiled_call
    from tasks.model import build_mnist_convnet

    model = build_mnist_convnet()
    x = to_model_input(np.random.default_rng(1).random((70, 28, 28)).astype(np.float32))
    eager = np.asarray(model(x, training=False))
    np.testing.assert_allclose(predict_proba(model, x, batch_size=32), eager, atol=1e-6)
    np.testing.assert_allclose(predict_proba(model, x[:1]), eager[:1], atol=1e-6)
    assert compiled_call(model) is compiled_call(model)
    dropout_on = np.asarray(model(x, training=True))
    assert np.abs(dropout_on - eager).max() > 1e-3  # so the comparison above can tell
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the cache did not keep it (nor its graph) alive
