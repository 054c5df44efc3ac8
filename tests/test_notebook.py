"""The course notebook (examples/price_is_right.ipynb) runs top to bottom in a real Jupyter kernel (nbclient),
on the embedded model, in its QUICK size: a plain function scored, a baseline, a tiny fine-tune with its live
chart and verdict, the fine-tuned model evaluated, the leaderboard and the scatter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "price_is_right.ipynb"


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == kind]


def test_the_course_notebook_runs_top_to_bottom(data_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    monkeypatch.setenv("APPRAISER_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("APPRAISER_DATA", str(data_dir))
    monkeypatch.setenv("APPRAISER_DTYPE", os.environ.get("APPRAISER_DTYPE", "fp32"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a shared 2-core machine: one thread is faster
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    errors = _outputs(nb, "error")
    assert not errors, errors
    shown = [o.get("data", {}).get("text/plain", "") for o in _outputs(nb, "display_data")]
    text = "".join(o.get("text", "") for o in _outputs(nb, "stream")) + "".join(shown)
    assert "random_pricer on test set" in text and "recorded as run 1 on the leaderboard" in text  # evaluate(fn)
    assert "by_length: MAE $" in text and "constant-median: MAE $" in text
    assert "fine-tuned: MAE $" in text and "loss: " in text  # the story line
    updates = _outputs(nb, "display_data")  # nbclient applies a display's updates to it in place
    verdicts = [o["data"]["text/markdown"] for o in updates if "text/markdown" in o.get("data", {})]
    states = ("too early", "falling", "flat", "rising", "diverging")
    assert any("step 4/4" in v and any(f"**{s}" in v for s in states) for v in verdicts), verdicts  # live verdict
    charts = [o for o in updates if "image/png" in o.get("data", {})]
    assert len(charts) >= 3  # the live loss chart, the leaderboard, the scatter
    tables = [o for o in _outputs(nb, "execute_result") + updates if "text/html" in o.get("data", {})]
    assert any("fine-tuned (" in t["data"]["text/html"] and "constant-median" in t["data"]["text/html"] for t in tables)
    assert (tmp_path / "notebook-charts").is_dir()
