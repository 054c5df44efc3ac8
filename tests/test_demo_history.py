"""The trend verdict on a real run: the history of `appraiser demo --quick --max-steps 80 --n-train 320`
(SmolLM2-135M with LoRA and a regression head, the shared data, this 2-core machine), copied from its run
store into tests/data/demo_run_history.json (steps, raw training loss, validation loss and probe MAE).

Its loss drops fast over the first ~20 steps, then only moves within its noise: the story must say "falling,
then flat", and the live verdict (what `runs watch` shows at each step) must go too early → falling → flat.
"""

from __future__ import annotations

import json
from pathlib import Path

from appraiser.runs.trend import phases, story, verdict

HISTORY = Path(__file__).parent / "data" / "demo_run_history.json"


def _history() -> dict:
    return json.loads(HISTORY.read_text(encoding="utf-8"))


def test_the_real_demo_runs_story_is_falling_then_flat():
    h = _history()
    steps, loss = h["steps"], h["loss"]
    ph = phases(steps, loss)
    assert [p.state for p in ph] == ["falling", "flat"], story(steps, loss)
    assert 10 <= ph[1].first_step <= 40 and ph[0].start > ph[1].median
    told = story(steps, loss)
    assert told.startswith("loss: fast initial drop") and ", then flat around" in told
    eval_steps, eval_loss = h["eval_steps"], h["eval_loss"]
    assert story(eval_steps, eval_loss, metric="validation loss", min_points=3).startswith(
        "validation loss: fast initial drop"
    )


def test_the_live_verdict_went_from_too_early_to_falling_to_flat():
    loss = _history()["loss"]
    seen = [verdict(loss[:n]).state for n in range(1, len(loss) + 1)]
    assert seen[:19] == ["too early"] * 19 and seen[19] == "falling"  # 20 points make a verdict
    assert seen[-1] == "flat" and "flat" not in seen[:40]  # flat only once the plateau outweighs the drop
