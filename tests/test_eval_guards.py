"""Guards of `appraiser eval | baseline | compare | leaderboard` and of saved pricers, found by a prober:
options that --model would drop, output paths found bad only after the fit and the leaderboard row, a negative
--size read as "all", compare's silent fallbacks and nan p-value, tied MAEs ranked by recency, and saved pricers
from another appraiser version."""

from __future__ import annotations

import pickle

import pytest
from typer.testing import CliRunner

from appraiser.atomic import write_text
from appraiser.cli import app
from appraiser.data.io import DataError
from appraiser.evaluation import LeaderboardStore
from appraiser.pricers.base import Prediction, Pricer
from appraiser.pricers.registry import create, register

runner = CliRunner()


@register("test-always-fails", "Test only: fails on every item.", kind="other", needs_fit=False)
class AlwaysFails(Pricer):
    name = "test-always-fails"

    def predict(self, items):
        return [Prediction(price=None) for _ in items]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(r, *words: str) -> None:
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error:") and len(r.output.strip().splitlines()) == 1, r.output
    for w in words:
        assert w in r.output, r.output


def leaderboard_rows(db) -> int:
    if not db.exists():
        return 0
    with LeaderboardStore(db) as store:
        return len(store.rows())


@pytest.fixture()
def split(small_split):
    train, validation = small_split(200, 40)
    return {"train": train, "test": validation}


def test_model_refuses_the_options_it_would_drop(split, tmp_path):
    """--model evaluated the saved pricer and silently dropped the pricer name, -o, --interval, --train …"""
    saved, db = tmp_path / "m.pkl", tmp_path / "lb.db"
    r = run("eval", "constant-mean", "--train", split["train"], "--test", split["test"], "--size", "10",
            "--save", saved, "--no-record")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run("eval", "tfidf-ridge", "--model", saved, "--interval", "0.8", "--interval-scale", "difficulty",
            "-o", "bogus=1", "--train", split["train"], "--validation", split["test"], "--save", tmp_path / "again.pkl",
            "--test", split["test"], "--size", "10", "--db", db)  # fmt: skip
    one_line_error(r, "--model", "'tfidf-ridge'", "-o", "--interval,", "--interval-scale", "--train", "--validation",
                   "--save")  # fmt: skip
    assert leaderboard_rows(db) == 0 and not (tmp_path / "again.pkl").exists()
    # What does apply with --model (a leaderboard name, the outputs) still works.
    r = run("eval", "--model", saved, "--name", "reloaded", "--test", split["test"], "--size", "10", "--db", db)
    assert r.exit_code == 0, r.output
    assert leaderboard_rows(db) == 1


@pytest.mark.parametrize(
    ("flag", "target", "words"),
    [
        ("--predictions", "{folder}", ["is a folder", "--predictions"]),
        ("--predictions", "/proc/nope.jsonl", ["/proc/nope.jsonl", "cannot be written"]),
        ("--predictions", "{file}/sub/p.jsonl", ["a file"]),
        ("--save", "/proc/x.pkl", ["/proc/x.pkl", "cannot be written"]),
        ("--save", "{folder}", ["is a folder", "--save"]),
        ("--charts", "{file}", ["is a file", "--charts"]),
        ("--charts", "{file}/charts", ["a file", "--charts"]),
    ],
)
@pytest.mark.parametrize("command", ["eval", "baseline"])
def test_a_bad_output_path_is_refused_before_the_fit_and_the_row(split, tmp_path, command, flag, target, words):
    """Each was one line, but only at the end: after the fit and after the leaderboard row was written."""
    folder, file, db = tmp_path / "out", tmp_path / "a-file.txt", tmp_path / "lb.db"
    folder.mkdir()
    file.write_text("keep me\n")
    path = target.format(folder=folder, file=file)
    r = run(command, "constant-mean", "--train", split["train"], "--test", split["test"], "--size", "10",
            flag, path, "--db", db)  # fmt: skip
    one_line_error(r, *words)
    assert "fitting" not in r.output and ".tmp-" not in r.output
    assert leaderboard_rows(db) == 0
    assert file.read_text() == "keep me\n" and list(folder.iterdir()) == []


def test_the_atomic_writer_names_the_users_path_not_its_temporary():
    """The error named `/proc/.nope.txt.tmp-…`, a file the user never asked for."""
    with pytest.raises(OSError) as e:
        write_text("/proc/nope.txt", "x")
    assert e.value.filename == "/proc/nope.txt"


def test_baseline_refuses_a_negative_size_as_eval_does(split, tmp_path):
    """`baseline --size -5` evaluated every item (eval refuses it)."""
    db = tmp_path / "lb.db"
    for command in ("eval", "baseline"):
        r = run(
            command, "constant-mean", "--train", split["train"], "--test", split["test"], "--size", "-5", "--db", db
        )
        assert r.exit_code == 2, r.output
        assert "--size" in r.output
    assert leaderboard_rows(db) == 0


def test_compare_says_when_it_pairs_on_part_of_the_runs(split, tmp_path):
    """Runs on different test sets: the MAEs shown are on the shared items, not the recorded ones; say so."""
    base = ["--train", split["train"], "--test", split["test"]]
    assert run("eval", "constant-mean", *base, "--size", "20").exit_code == 0
    assert run("eval", "constant-median", *base, "--size", "30").exit_code == 0
    r = run("compare", "constant-mean", "constant-median")
    assert r.exit_code == 0, r.output
    assert "different test sets (20 and 30 items)" in r.output and "the 20 items both hold" in r.output


def test_compare_with_nothing_to_pair_is_an_error(split, tmp_path):
    """No shared items, or B failing on every one, printed "p-value nan" and exited 0."""
    test = split["test"]
    assert run("eval", "constant-mean", "--train", split["train"], "--test", test, "--size", "10").exit_code == 0
    assert run("eval", "test-always-fails", "--test", test, "--size", "10").exit_code == 0
    assert run("eval", "test-length-free", "--test", test, "--size", "5", "--offset", "20").exit_code == 0
    one_line_error(
        run("compare", "constant-mean", "test-always-fails"), "test-always-fails on 10", "none was priced by both"
    )
    one_line_error(run("compare", "constant-mean", "test-length-free"), "share no test items")


@register("test-length-free", "Test only: price from text length.", kind="other", needs_fit=False)
class LengthPricer(Pricer):
    name = "test-length-free"

    def predict(self, items):
        return [Prediction(price=len(it.text) / 10) for it in items]


def test_tied_maes_share_a_rank(split):
    """Two runs with the same MAE were ranked 1 and 2 by recency."""
    base = ["--train", split["train"], "--test", split["test"], "--size", "10"]
    for name in ("first", "second"):
        assert run("eval", "constant-mean", *base, "--name", name).exit_code == 0
    assert run("eval", "test-length-free", "--test", split["test"], "--size", "10").exit_code == 0
    r = run("leaderboard", "--test", split["test"], "--size", "10")
    assert r.exit_code == 0, r.output
    ranks = {}
    for line in r.output.splitlines():
        cells = line.split()
        if len(cells) > 1 and cells[1] in ("first", "second", "test-length-free"):
            ranks[cells[1]] = cells[0]
    assert ranks["first"] == ranks["second"] and ranks["first"].endswith("=")
    assert ranks["test-length-free"] in ("1", "3")  # competition ranking: after two tied, the next is 3


def test_a_pricer_saved_by_another_version_is_refused_and_an_old_file_loads(split, tmp_path, monkeypatch):
    """A pickle holds state, not code: one from another appraiser version is refused on load, by name, while a
    file from before the version stamp (a bare pickled pricer) still loads."""
    import appraiser
    from appraiser.data.io import read_items

    pricer = create("constant-mean").fit(read_items(split["train"]))
    stamped = pricer.save(tmp_path / "now.pkl")
    assert Pricer.load(stamped).predict(read_items(split["test"])[:2])[0].price == pytest.approx(
        pricer.predict(read_items(split["test"])[:1])[0].price
    )

    monkeypatch.setattr(appraiser, "__version__", "0.0.1")
    pricer.save(tmp_path / "old.pkl")
    monkeypatch.undo()
    with pytest.raises(DataError, match=rf"saved by appraiser 0\.0\.1, this is {appraiser.__version__}: refit"):
        Pricer.load(tmp_path / "old.pkl")
    r = run("eval", "--model", tmp_path / "old.pkl", "--test", split["test"], "--size", "5")
    one_line_error(r, "saved by appraiser 0.0.1", "refit and save again")

    bare = tmp_path / "bare.pkl"  # what `save` wrote before the stamp
    bare.write_bytes(pickle.dumps(pricer))
    assert isinstance(Pricer.load(bare), type(pricer))


def test_model_help_warns_that_a_saved_pricer_is_a_pickle():
    r = run("eval", "--help")
    assert "pickle" in r.output and "trust" in r.output


def test_size_without_test_is_refused_by_compare_and_leaderboard(split):
    """`compare A B --size 250` used the rows of the most recent test set whatever their size (the README's own
    example compared a 20-item run): --size cuts --test, so alone it is an error, and with --test it picks."""
    base = ["--train", split["train"], "--test", split["test"]]
    assert run("eval", "constant-mean", *base, "--size", "10").exit_code == 0
    assert run("eval", "constant-median", *base, "--size", "10").exit_code == 0
    assert run("eval", "constant-median", *base, "--size", "5").exit_code == 0  # the most recent test set
    for args in (("compare", "constant-mean", "constant-median"), ("leaderboard",)):
        one_line_error(run(*args, "--size", "10"), "--size picks the first N items of --test")
    r = run("compare", "constant-mean", "constant-median", "--test", split["test"], "--size", "10")
    assert r.exit_code == 0 and "different test sets" not in r.output, r.output
    r = run("leaderboard", "--test", split["test"], "--size", "10")
    assert r.exit_code == 0 and "(10 items)" in r.output, r.output


def test_a_missing_default_data_file_names_the_fix(tmp_path, monkeypatch):
    """Run from another directory, every command that omits --test/--train looked for ../shared/data relative to
    it and said only "no such file": the error now names the default folder and APPRAISER_DATA."""
    monkeypatch.setenv("APPRAISER_DATA", str(tmp_path / "nowhere"))
    r = run("eval", "constant-mean", "--size", "5")
    one_line_error(r, "is the default data folder", "APPRAISER_DATA")
    r = run("eval", "constant-mean", "--test", tmp_path / "typo.jsonl")  # a path given: no such hint
    one_line_error(r, "typo.jsonl: no such file or folder")
    assert "APPRAISER_DATA" not in r.output
