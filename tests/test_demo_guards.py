"""The demo's guards, checked before it writes anything: it never writes into its --data folder, never
replaces a folder it did not make, names a file given for a folder, and leaves no --out behind on a bad option.
And the choice of its fine-tune on a re-run: the earlier run with the same config, or a new one."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.data.io import DataError
from appraiser.demo import MANIFEST, DemoConfig, _earlier_fine_tune, check_paths


@pytest.fixture()
def project(data_dir, tmp_path):
    """proj/data with the first 300 training and 40 validation lines of the real data."""
    data = tmp_path / "proj" / "data"
    data.mkdir(parents=True)
    for name, n in (("train.jsonl", 300), ("validation.jsonl", 40)):
        lines = (data_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (data / name).write_text("".join(lines), encoding="utf-8")
    return data


def _demo(*args: str):
    return CliRunner().invoke(app, ["demo", "--quick", *args])


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_demo_never_writes_into_its_data_folder(project):
    proj = project.parent
    before = _snapshot(proj)
    for out in (proj, project, project / "report", project.parent / "data" / ".." / "data"):
        result = _demo("--data", str(project), "--out", str(out))
        assert result.exit_code == 2, result.output
        assert "choose an --out outside the data folder" in result.output and "Traceback" not in result.output
        assert _snapshot(proj) == before  # 300 training rows still, and no test/probe/blend files beside them
    assert not (project / "report").exists()


def test_a_folder_the_demo_did_not_make_is_refused(project, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("my own page", encoding="utf-8")
    result = _demo("--data", str(project), "--out", str(mine))
    assert result.exit_code == 2 and "is not empty and holds no demo report" in result.output
    assert (mine / "index.html").read_text(encoding="utf-8") == "my own page" and len(list(mine.iterdir())) == 1
    # an empty folder, a new one and an earlier demo's (its manifest) are the demo's to write
    for ok in (tmp_path / "empty", tmp_path / "new" / "report", tmp_path / "earlier", tmp_path / "older"):
        if ok.name != "report":
            ok.mkdir()
        if ok.name == "earlier":
            (ok / MANIFEST).write_text("{}", encoding="utf-8")
            (ok / "index.html").write_text("an old report", encoding="utf-8")
        if ok.name == "older":  # a report of the demo from before the manifest: only what the demo writes
            for name in ("index.html", "leaderboard.db", "plotly.min.js"):
                (ok / name).write_text("an old report", encoding="utf-8")
            (ok / "data").mkdir()
        check_paths(DemoConfig(data=str(project), out=ok))
    (tmp_path / "older" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(DataError, match="holds no demo report"):
        check_paths(DemoConfig(data=str(project), out=tmp_path / "older"))


def test_a_file_given_for_a_folder_is_named(project, tmp_path):
    a_file = tmp_path / "report.html"
    a_file.write_text("x", encoding="utf-8")
    result = _demo("--data", str(project), "--out", str(a_file))
    assert result.exit_code == 2 and f"{a_file} is a file; --out needs a folder" in result.output
    result = _demo("--data", str(project / "train.jsonl"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "--data needs a folder (train.jsonl + validation.jsonl) or a hub id, not a file" in result.output


def test_a_refused_option_leaves_no_out_folder(project, tmp_path):
    out = tmp_path / "out"
    result = _demo("--data", str(project), "--out", str(out), "--test-size", "100000")
    assert result.exit_code == 2 and "the demo needs more than 100000" in result.output
    assert not out.exists()
    result = _demo("--data", str(tmp_path / "nowhere"), "--out", str(out))
    assert result.exit_code == 2 and "no such file or folder" in result.output
    assert not out.exists()


def test_a_rerun_takes_up_the_fine_tune_of_the_same_config(tmp_path, data_dir):
    from appraiser.runs.store import RunStore
    from appraiser.training.config import TrainConfig
    from appraiser.training.trainer import resolve_paths

    tcfg = TrainConfig(
        model="smollm2-135m", train=data_dir / "train.jsonl", validation=data_dir / "validation.jsonl", max_steps=6
    )
    store = RunStore()

    def run_with(cfg, status):
        folder = tmp_path / f"run-{len(store.list())}"
        (folder / "final").mkdir(parents=True)
        config = resolve_paths(cfg).model_dump(mode="json")
        run = store.create(name="demo", max_steps=6, folder=str(folder), config=config)
        store.set_status(run.id, status)
        return run

    cancelled = run_with(tcfg, "cancelled")
    assert _earlier_fine_tune(cancelled.id, tcfg).id == cancelled.id  # resumed, not started anew
    assert _earlier_fine_tune(cancelled.id, tcfg.model_copy(update={"max_steps": 7})) is None  # other config
    done = run_with(tcfg, "succeeded")
    assert _earlier_fine_tune(done.id, tcfg).id == done.id  # reused
    (done.folder / "final").rmdir()
    assert _earlier_fine_tune(done.id, tcfg) is None  # its adapter is gone: trained again
    assert _earlier_fine_tune(None, tcfg) is None and _earlier_fine_tune("20000101-000000-dead", tcfg) is None


def test_the_manifest_marks_the_folder(tmp_path, data_dir):
    """A demo folder is recognised by its manifest even when the manifest is damaged (its run is not reused)."""
    from appraiser.demo import _manifest

    out = tmp_path / "report"
    out.mkdir()
    (out / MANIFEST).write_text("{not json", encoding="utf-8")
    (out / "index.html").write_text("old", encoding="utf-8")
    check_paths(DemoConfig(data=str(data_dir), out=out))
    assert _manifest(out) == {}
    (out / MANIFEST).write_text(json.dumps({"settings": {}, "fine_tune": "x"}), encoding="utf-8")
    assert _manifest(out)["fine_tune"] == "x"
