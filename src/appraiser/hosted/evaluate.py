"""`--eval-on-finish`: price the fixed test set with a finished job's model (and, on request, each
checkpoint's) through the `api` pricer, and put the result on the leaderboard.

Each model is evaluated once per run and test set (`RunStore.claim`), so a rerun of `hosted watch` after
the job ended does not pay for the same evaluation again; a failed evaluation is unclaimed, so a rerun
tries it again. An evaluation where every item failed (the model is not there, the key cannot reach it) is
a failed evaluation: no leaderboard row, nothing recorded as done, and a DataError naming the first
reason once the other models have had their turn. The result (MAE and leaderboard row) is written on the
run as an event and in its state.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from appraiser.data.io import DataError


def models_to_evaluate(run: Any, checkpoints: list[Any] | None = None) -> list[tuple[str, str]]:
    """(label, model name): the fine-tuned model, then each checkpoint's model by step."""
    out = []
    for c in checkpoints or []:
        if c.fine_tuned_model_checkpoint and c.fine_tuned_model_checkpoint != run.config.get("fine_tuned_model"):
            out.append((f"step {c.step_number}", c.fine_tuned_model_checkpoint))
    model = run.config.get("fine_tuned_model")
    if model:
        out.append(("final", model))
    return out


def evaluate_models(
    store: Any,
    run: Any,
    models: list[tuple[str, str]],
    *,
    test: str | Path,
    size: int | None = 250,
    show: bool = True,
    say: Callable[[str], None] | None = None,
    leaderboard: Any = None,
) -> list[dict[str, Any]]:
    """Evaluate each model with the `api` pricer on the run's endpoint; one leaderboard row each."""
    from appraiser.evaluation.evaluator import evaluate, load_test_items, record_result
    from appraiser.hosted.jobs import endpoint_of
    from appraiser.items import fingerprint
    from appraiser.pricers import registry

    if not models:
        raise DataError(f"run {run.id} has no fine-tuned model to evaluate (status {run.status})")
    say = say or (lambda _msg: None)
    endpoint = endpoint_of(run)
    items = load_test_items(test, size)
    fp = fingerprint(items)
    done, failures = [], []
    for label, model in models:
        key = f"hosted:evaluated:{model}:{fp}"
        if not store.claim(run.id, key, None):
            say(f"{model} was already evaluated on this test set")
            continue
        try:
            pricer = registry.create("api", model=model, base_url=endpoint.base_url, key_env=endpoint.key_env)
            say(f"evaluating {model} ({label}) on {len(items)} test items")
            result = evaluate(pricer, items, show=show, record=False, store=leaderboard)
            nothing_priced(result)
        except DataError as e:
            store.unclaim(run.id, key)
            failures.append(f"evaluating {model} ({label}): {e}")
            continue
        except BaseException:
            store.unclaim(run.id, key)
            raise
        record_result(result, leaderboard)
        say(f"recorded as run {result.run_id} on the leaderboard")
        mae = result.metrics.get("mae")
        summary = {"model": model, "label": label, "mae": mae, "leaderboard_id": result.run_id, "fingerprint": fp}
        store.set_state(run.id, key, summary)
        mae_text = f"${mae:,.2f}" if isinstance(mae, int | float) else "?"
        store.add_event(run.id, f"Evaluated {model} ({label}) on {len(items)} test items: MAE {mae_text}")
        done.append(summary)
    if failures:
        more = f" (and {len(failures) - 1} more failed evaluations)" if len(failures) > 1 else ""
        raise DataError(f"{failures[0]}{more}; rerun `appraiser hosted watch {run.id}` to try again")
    return done


def nothing_priced(result: Any) -> None:
    """A DataError with the first reason when no item got a price: an evaluation of nothing is not a
    result (its MAE would be NaN) and must not count as done."""
    if any(not r.failed for r in result.results):
        return
    first = next((r.raw for r in result.results if r.raw), None) or "no answer"
    raise DataError(f"every one of the {len(result.results)} test items failed; first: {first}")
