"""A bounded fuzz of the CLI: random options, values, paths and file contents for every command that can run
without loading a model. Every run must end with exit code 0 or 2 and never print a traceback.

`catch_exceptions=False` makes an exception that escapes a command fail the test (typer's runner would
otherwise swallow it into exit code 1); a few runs go through the real `appraiser` entry point (`main()`),
which is what a user gets. Commands that would load a model are given a bogus model, or `--dry-run` on a
handful of items, so each example takes a fraction of a second.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.data.io import read_items, write_items

runner = CliRunner()
CLI = [sys.executable, "-c", "from appraiser.cli import main; main()"]
FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check(args: list[str]) -> None:
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code in (0, 2), f"exit {result.exit_code} for {args}: {result.output[-2000:]}"
    assert "Traceback" not in result.output, f"{args}: {result.output[-2000:]}"


@pytest.fixture(scope="module")
def files(data_dir, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fuzz")
    items = read_items(data_dir / "train.jsonl", limit=40)
    write_items(items[:30], d / "train.jsonl")
    write_items(items[30:], d / "validation.jsonl")
    good = (d / "train.jsonl").read_text(encoding="utf-8")
    (d / "truncated.jsonl").write_text(good[: len(good) // 2], encoding="utf-8")
    (d / "truncated.jsonl.gz").write_bytes(gzip.compress(good.encode())[:300])
    (d / "garbage.parquet").write_bytes(b"PAR1 not really")
    (d / "latin1.csv").write_bytes(f"id,price\n{items[30].id},12.5\ncaf\xe9,3\n".encode("latin-1"))
    (d / "empty.jsonl").write_text("", encoding="utf-8")
    (d / "folder").mkdir()
    return {"dir": d, "train": d / "train.jsonl", "validation": d / "validation.jsonl"}


# ---------------------------------------------------------------- strategies

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
VALUES = st.one_of(
    TEXT,
    st.integers(-5, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(json.dumps),
    st.sampled_from(["null", "true", "[]", "[1, 2]", '{"a": 1}', "[/]", "[red]x", "1e999", "-0", ""]),
)
OPTION_KEYS = st.sampled_from(
    ["seed", "target", "weighting", "categories", "off_category_weight", "k", "alpha", "shrink", "n_trees", "", "="]
)


def _path(files: dict[str, Path], name: str) -> str:
    return str(files["dir"] / name) if name != "missing" else str(files["dir"] / "no-such-file.jsonl")


PATHS = st.sampled_from(
    [
        "train.jsonl",
        "validation.jsonl",
        "truncated.jsonl",
        "truncated.jsonl.gz",
        "garbage.parquet",
        "latin1.csv",
        "empty.jsonl",
        "folder",
        "missing",
    ]
)
CONTENT = st.one_of(
    st.binary(max_size=200),
    TEXT.map(str.encode),
    st.sampled_from([b'{"id": "a", "text": "x", "price": 1}\n{"id": "b", "te', b"[1, 2]", b"{}", b"\xff\xfe", b""]),
)


def _write(folder: Path, content: bytes, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(suffix=suffix, dir=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return Path(name)


# ---------------------------------------------------------------- eval and baseline


@given(
    command=st.sampled_from(["eval", "baseline"]),
    pricer=st.sampled_from(["constant-mean", "constant-median", "random", "linear", "no-such", "[x]"]),
    options=st.lists(st.tuples(OPTION_KEYS, VALUES), max_size=3),
    size=st.integers(-2, 40),
    offset=st.integers(-1, 12),
    test=PATHS,
    with_validation=st.booleans(),
    output=st.one_of(
        st.none(),
        st.tuples(
            st.sampled_from(["--predictions", "--charts", "--db", "--save"]),
            st.sampled_from(["folder", "garbage.parquet", "no-such-folder/x/out", "new-output"]),
        ),
    ),
)
@settings(FUZZ, max_examples=45)
def test_fuzz_eval_and_baseline(files, command, pricer, options, size, offset, test, with_validation, output):
    args = [command, pricer, "--train", str(files["train"]), "--test", _path(files, test)]
    args += ["--size", str(size), "--offset", str(offset)]
    for key, value in options:
        args += ["-o", f"{key}={value}"]
    if with_validation:
        args += ["--validation", str(files["validation"])]
    if command == "baseline":
        args += ["--quiet"]
    if output is not None:
        flag, where = output
        args += [flag, str(files["dir"] / where) if where != "no-such-folder/x/out" else "/proc/no-such/x/out"]
    else:
        args += ["--no-record"] + (["--save", str(files["dir"] / "model.pkl")] if command == "baseline" else [])
    check(args)


# ---------------------------------------------------------------- data, leaderboard, compare, imports


@given(
    command=st.sampled_from(["stats", "prompts", "import", "human", "curate"]),
    content=CONTENT,
    suffix=st.sampled_from([".jsonl", ".jsonl.gz", ".parquet", ".csv", ".json", ".txt", ""]),
)
@settings(FUZZ, max_examples=35)
def test_fuzz_commands_on_random_files(files, command, content, suffix):
    path = str(_write(files["dir"], content, suffix))
    test = str(files["validation"])
    args = {
        "stats": ["data", "stats", path],
        "prompts": ["data", "prompts", path, "--model", "no-such-model", "--limit", "2"],
        "import": ["import-predictions", path, "--name", "fuzz", "--test", test, "--size", "5"],
        "human": ["human", "import", path, "--test", test],
        "curate": [
            "data", "curate", path, "--out", str(files["dir"] / "curated"), "--workers", "1",
            "--no-charts", "--fresh", "--category", "Fuzz",
        ],
    }[command]  # fmt: skip
    check(args)


@given(
    args=st.one_of(
        st.tuples(st.just("leaderboard"), st.sampled_from(["--fingerprint", "--size"]), VALUES),
        st.tuples(st.just("compare"), TEXT | st.sampled_from(["²", "1", "007"]), TEXT),
        st.tuples(st.just("leaderboard"), st.just("--test"), PATHS),
        st.tuples(st.just("human"), st.just("export"), st.integers(-3, 5).map(str)),
    )
)
@settings(FUZZ, max_examples=20)
def test_fuzz_leaderboard_compare_and_export(files, args):
    head, a, b = args
    if head == "leaderboard" and a == "--test":
        check(["leaderboard", "--test", _path(files, b), "--size", "5"])
    elif head == "human":
        out = str(files["dir"] / "human.csv")
        check(["human", "export", "--test", str(files["validation"]), "--n", b, "--out", out])
    elif head == "compare":
        check(["compare", a or "-", b or "-"])
    else:
        check([head, a, b])


# ---------------------------------------------------------------- runs and train


@given(
    command=st.sampled_from(["list", "show", "events", "watch"]),
    name=st.one_of(TEXT, st.sampled_from(["last", "x[/]", "[bold]", "fuzz"])),
    number=st.integers(-3, 5),
    alpha=st.one_of(st.floats(-1, 2), st.just(float("nan"))),
)
@settings(FUZZ, max_examples=25)
def test_fuzz_runs(command, name, number, alpha):
    from appraiser.runs.store import RunStore

    store = RunStore()
    if not store.list():
        r = store.create(kind="local", name="x[/]", model="[bold]m", config={"lr": "[/]"})
        store.set_status(r.id, "failed", error="boom [red]")
    args = {
        "list": ["runs", "list", "--limit", str(number), "--status", name],
        "show": ["runs", "show", name or "-"],
        "events": ["runs", "events", name or "-", "--tail", str(number)],
        "watch": ["runs", "watch", name or "-", "--once", "--alpha", str(alpha), "--width", str(number * 20)],
    }[command]
    check(args)


TRAIN_FIELDS = st.dictionaries(
    st.sampled_from(["model", "lora_r", "weighting", "max_steps", "batch_size", "probe_every", "bogus", "seed"]),
    st.one_of(st.integers(-3, 3), TEXT, st.none(), st.lists(st.integers(), max_size=2), st.floats()),
    max_size=3,
)


@given(
    config=st.one_of(TRAIN_FIELDS.map(json.dumps), CONTENT.map(lambda b: b.decode("utf-8", "replace"))),
    model=st.one_of(st.none(), st.sampled_from(["typo", "./nope", "[gpu]", "", "smollm"])),
)
@settings(FUZZ, max_examples=20)
def test_fuzz_train_config_and_model(files, config, model):
    """Random --config contents and bogus models, checked before any model loads (--dry-run on 30 items)."""
    path = _write(files["dir"], config.encode("utf-8"), ".json")
    args = ["train", "--config", str(path), "--train", str(files["train"]), "--validation", str(files["validation"])]
    args += ["--n-train", "4", "--dry-run"] + (["--model", model] if model is not None else ["--model", "typo"])
    check(args)


NUMBERS = st.one_of(st.integers(-3, 10**7).map(str), st.floats().map(str), TEXT, st.sampled_from(["0", "1e400"]))
TRAIN_FLAGS = st.sampled_from(
    [
        "--n-train", "--weighting", "--off-category-weight", "--max-steps", "--epochs", "--batch-size",
        "--grad-accum", "--lr", "--warmup-ratio", "--lora-r", "--lora-alpha", "--lora-dropout",
        "--target-modules", "--max-text-tokens", "--head-weight", "--lm-weight", "--head-pooling",
        "--head-refit", "--probe-every", "--probe-size", "--probe-method", "--save-every",
        "--keep-checkpoints", "--patience", "--seed", "--threads", "--report-to", "--name", "--resume",
    ]
)  # fmt: skip


@given(flags=st.lists(st.tuples(TRAIN_FLAGS, NUMBERS), min_size=1, max_size=4))
@settings(FUZZ, max_examples=20)
def test_fuzz_train_options(files, flags):
    """Random option values for `train`: each fails validation (or names no model) before anything loads."""
    args = ["train", "--train", str(files["train"]), "--model", "typo", "--dry-run"]
    for flag, value in flags:
        args += [flag, value]
    check(args)


CURATE_FLAGS = st.sampled_from(
    ["--size", "--min-chars", "--seed", "--split", "--format", "--band-width", "--flatten", "--category-weight"]
)


@given(flags=st.lists(st.tuples(CURATE_FLAGS, NUMBERS | st.sampled_from(["8,1,1", "0.5,0.5", "A=0.5"])), max_size=3))
@settings(FUZZ, max_examples=15)
def test_fuzz_curate_options(files, raw_sample, flags):
    """`data curate` on 20 real raw records with random options: it curates them or says what is wrong."""
    raw = files["dir"] / "meta_Fuzz.jsonl"
    if not raw.exists():
        with open(raw_sample, encoding="utf-8") as f:
            raw.write_text("".join(next(f) for _ in range(20)), encoding="utf-8")
    args = ["data", "curate", str(raw), "--out", str(files["dir"] / "curated-opts"), "--workers", "1"]
    args += ["--no-charts", "--fresh"]
    for flag, value in flags:
        args += [flag, value]
    check(args)


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "xgboost", "-o", "n_trees=[gpu]"],
        ["baseline", "[no-such]", "--size", "3"],
        ["runs", "watch", "x[/]", "--once"],
        ["data", "stats", "/no/such/dir"],
    ],
)
def test_the_entry_point_a_user_runs(args):
    """`main()` itself (what the `appraiser` script runs): exit code 0 or 2 and no traceback."""
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 2), r.stderr[-2000:]
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-2000:]
