"""The README's main job on embedded defaults: make sure a champion exists, then evaluate it.

The telegram pipeline extends this (issue 4); until then the demo is train, register,
evaluate.
"""

from __future__ import annotations

from pathlib import Path

from flows.evaluate import evaluate_digits_flow
from flows.train import train_flow
from tasks import tracking
from tasks.errors import CifrasError
from tasks.settings import Settings, load_settings


def has_champion(settings: Settings) -> bool:
    client = tracking.configure_mlflow(settings)
    try:
        tracking.resolve_model(client, settings.evaluate.model_uri)
        return True
    except CifrasError:
        return False


def demo_sets(settings: Settings) -> list[tuple[Path, str]]:
    """The digit sets to score: MNIST test, plus USPS and optdigits where shared data exists."""
    sets = []
    if settings.mnist_path and settings.mnist_path.is_file():
        sets.append((settings.mnist_path, "test"))
    for parts, split in ((("usps", "usps.npz"), "test"), (("optdigits", "optdigits.npz"), "windep")):
        path = settings.shared_path(*parts)
        if path is not None:
            sets.append((path, split))
    return sets


def run_demo() -> dict:
    settings = load_settings()
    trained = None
    if not has_champion(settings):
        trained = train_flow()
    rows = [evaluate_digits_flow(str(path), split=split) for path, split in demo_sets(settings)]
    return {"trained": trained, "evaluations": rows, "tracking_uri": settings.mlflow_tracking_uri}


def render(result: dict) -> str:
    lines = []
    if result["trained"]:
        t = result["trained"]
        lines.append(f"trained digit-cnn v{t['version']} in {t['wall_s']} s "
                     f"(MNIST test accuracy {t['mnist_test']['accuracy']:.4f}, "
                     f"{'now champion' if t['promoted'] else 'challenger'})")
    lines.append(f"{'dataset':<20}{'model':<16}{'n':>7}{'accuracy':>10}{'P':>8}{'R':>8}{'F1':>8}")
    for r in result["evaluations"]:
        lines.append(f"{r['dataset']:<20}{r['model']:<16}{r['n']:>7}{r['accuracy']:>10.4f}"
                     f"{r['precision_macro']:>8.4f}{r['recall_macro']:>8.4f}{r['f1_macro']:>8.4f}")
    uri = result["tracking_uri"]
    lines.append("")
    lines.append(f"MLflow UI:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    lines.append("Prefect UI: prefect server start --host 127.0.0.1   (then http://127.0.0.1:4200)")
    return "\n".join(lines)
