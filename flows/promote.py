"""`cifras promote`: judge an already registered version (a challenger, an augmented variant)
against the champion by the promotion rule, and move the alias only if the rule says so."""

from __future__ import annotations

from prefect import flow

from tasks import tracking
from tasks.errors import CifrasError
from tasks.model_tasks import judge_task, load_model_task, validation_accuracy
from tasks.settings import load_settings

EXPERIMENT = "digit-promotion"


@flow(name="promote", log_prints=True)
def promote_flow(model: str) -> dict:
    settings = load_settings()
    client = tracking.configure_mlflow(settings)
    ref, keras_model = load_model_task(client, model)
    if ref.version is None:
        raise CifrasError(f"{model} is not a registered version (models:/NAME/VERSION)")
    name, alias = settings.mlflow.registered_model, settings.mlflow.champion_alias
    champion = tracking.champion_scores(client, name, alias)
    if champion is not None and champion["version"] == ref.version:
        return {"model": ref.label, "promoted": False, "reason": "already the champion"}
    mv = client.get_model_version(ref.name, ref.version)
    own = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    if "test_accuracy" not in own:
        raise CifrasError(f"{ref.label} has no MNIST test figures in its run; evaluate it first")
    mnist = {"accuracy": own["test_accuracy"], "f1_macro": own.get("test_f1_macro", own["test_accuracy"])}
    experiment = tracking.ensure_experiment(client, settings, EXPERIMENT)
    with tracking.tracked_run(client, experiment, f"judge-{ref.label}",
                              tags={"candidate": ref.label}) as run_id:
        comparison = judge_task(client, settings, keras_model, mnist, run_id)
        decision = comparison["decision"]
        if decision["promote"]:
            tracking.promote(client, name, alias, ref.version)
        client.set_model_version_tag(name, ref.version, "promotion", decision["reason"][:5000])
        client.set_tag(run_id, "promoted", str(decision["promote"]).lower())
    return {"model": ref.label, "promoted": decision["promote"], "reason": decision["reason"],
            "previous_champion": champion["version"] if champion else None, "mlflow_run_id": run_id,
            "validation_number_accuracy": validation_accuracy(comparison["candidate"]),
            "champion_validation_number_accuracy": validation_accuracy(comparison["champion"])}
