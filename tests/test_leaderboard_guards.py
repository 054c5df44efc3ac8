"""Guards of the leaderboard's ranking and comparisons, found by a probe: a pricer that abstained on all but one
item ranked first on its one-cent MAE (in `appraiser leaderboard`, the dashboard, the charts and the demo), and
`paired_compare` refused the EvalResult that `evaluate` and the store return."""

from __future__ import annotations

import math

from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.evaluation import LeaderboardStore
from appraiser.evaluation.compare import paired_compare
from appraiser.evaluation.evaluator import score
from appraiser.evaluation.metrics import MIN_PRICED_SHARE, mae_rank
from appraiser.items import Item

ITEMS = [Item(id=f"k{i}", title=f"thing {i}", text=f"a thing {i}", price=100.0 + i) for i in range(50)]


def _board():
    """Four evaluations of the 50 items: two alike that priced all (MAE $20), one that priced 1 and abstained on
    49 (MAE $0.01), and one that priced none; the abstainer is recorded first so recency cannot rank it."""
    return [
        score(ITEMS, [it.price + 0.01 if i == 0 else None for i, it in enumerate(ITEMS)], name="abstainer"),
        score(ITEMS, [it.price + 20 for it in ITEMS], name="steady"),
        score(ITEMS, [it.price - 20 for it in ITEMS], name="steady-too"),
        score(ITEMS, [None] * 50, name="all-failed"),
    ]


def test_mae_rank_puts_rows_that_priced_too_few_items_after_the_others():
    def metrics(n, failures, mae):
        return {"n": n, "failures": failures, "coverage": (n - failures) / n, "mae": mae}

    full, abstainer, none = metrics(50, 0, 100.0), metrics(50, 49, 0.01), metrics(50, 50, math.nan)
    assert sorted([none, abstainer, full], key=mae_rank) == [full, abstainer, none]
    assert mae_rank(metrics(50, 5, 1.0)) < mae_rank(full)  # exactly MIN_PRICED_SHARE priced is enough
    assert MIN_PRICED_SHARE == 0.9 and mae_rank(metrics(50, 6, 1.0)) > mae_rank(full)
    assert mae_rank({"n": 50, "failures": 49, "mae": 0.01}) > mae_rank(full)  # no coverage: from n and failures
    assert mae_rank({"mae": 1.0}) < mae_rank(full)  # a row that records neither: by its MAE, as before
    assert mae_rank({}) > mae_rank(abstainer) and mae_rank({}).mae == math.inf
    assert mae_rank(abstainer).mae == 0.01  # the MAE itself is unchanged


def test_the_leaderboard_ranks_an_abstainer_after_the_others_and_says_why(tmp_path):
    db = tmp_path / "lb.db"
    with LeaderboardStore(db) as store:
        for r in _board():
            store.add(r)
    r = CliRunner().invoke(app, ["leaderboard", "--db", str(db)])
    assert r.exit_code == 0, r.output
    ranks, fails = {}, {}
    for line in r.output.splitlines():
        cells = line.split()
        if len(cells) > 1 and cells[1] in ("abstainer", "steady", "steady-too", "all-failed"):
            ranks[cells[1]], fails[cells[1]] = cells[0], line
    assert ranks == {"steady": "1=", "steady-too": "1=", "abstainer": "3", "all-failed": "4"}, r.output
    assert "49*" in fails["abstainer"] and "*" not in fails["steady"] and "*" not in fails["all-failed"]
    assert "* ranked after the others: priced under 90% of the items" in " ".join(r.output.split())
    assert "$0.01" in fails["abstainer"]  # its MAE is still shown as it is


def test_a_board_where_every_row_priced_enough_has_no_footnote(tmp_path):
    db = tmp_path / "lb.db"
    with LeaderboardStore(db) as store:
        store.add(_board()[1])
    r = CliRunner().invoke(app, ["leaderboard", "--db", str(db)])
    assert r.exit_code == 0 and "ranked after" not in r.output and "*" not in r.output, r.output


def test_the_dashboard_charts_and_demo_rank_an_abstainer_after_the_others(tmp_path):
    from appraiser.demo_report import model_vs_traditional
    from appraiser.evaluation.charts import leaderboard_figure
    from appraiser.server import dashboard_data

    results = _board()
    with LeaderboardStore(tmp_path / "leaderboard.db") as store:
        for r in results:
            store.add(r)
    rows = dashboard_data.leaderboard(tmp_path / "leaderboard.db")["rows"]
    assert [r["label"] for r in rows][2:] == ["abstainer", "all-failed"]
    assert [r["ranked_after"] for r in rows] == [False, False, True, False]  # the page marks the abstainer
    assert list(leaderboard_figure(results).data[0].y)[2:] == ["abstainer", "all-failed"]
    for r in results:  # the demo's best model-based pricer is not the one that priced a single item
        r.pricer = {"abstainer": "lora-a", "steady": "lora-s", "steady-too": "tfidf-x", "all-failed": "lora-f"}[
            r.pricer
        ]
    line = model_vs_traditional(results)
    assert "lora-s" in line and "lora-a" not in line and "lora-f" not in line


def test_paired_compare_takes_eval_results_as_well_as_their_item_lists(tmp_path):
    """`paired_compare(result_a, result_b)` failed: "'EvalResult' object is not iterable"."""
    a, b = _board()[1], _board()[0]
    with LeaderboardStore(tmp_path / "lb.db") as store:
        stored = store.result(store.add(b))
    c = paired_compare(a, stored, "steady", "abstainer")
    assert c == paired_compare(a.results, b.results, "steady", "abstainer")
    assert (c.n, c.skipped, c.failed_b) == (1, 49, 49) and c.mae_a == 20.0
    assert paired_compare(a, b.results).n == paired_compare(a.results, b).n == 1
