"""Shared fixtures: the real data beside the checkout, and an isolated state folder per test."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

REPO = Path(__file__).resolve().parents[1]

# The suite checks exact identities (beam = teacher forcing, batched = one by one) and must give the same
# answers on every CI machine, so it runs in fp32 even where the CPU would pick bf16;
# tests/test_dtype.py covers the bf16 path explicitly.
os.environ.setdefault("APPRAISER_DTYPE", "fp32")


@pytest.fixture(autouse=True)
def _sigint_reaches_subprocesses():
    """A shell that starts the suite in the background (`cmd &` without job control) ignores SIGINT, and an
    ignored signal stays ignored in every process started from it: the Ctrl-C tests' `appraiser` processes
    would never see KeyboardInterrupt and train on. With Python's own handler here, a child starts with the
    default disposition, as it would from a terminal (a handler, unlike an ignore, is reset by exec)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


def shared_data_dir() -> Path:
    return Path(os.environ.get("APPRAISER_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """`../shared/data`. Missing data fails under CI (it must be there) and skips elsewhere."""
    d = shared_data_dir()
    if not (d / "train.jsonl").exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared data not found at {d}")
        pytest.skip(f"shared data not found at {d}")
    return d


@pytest.fixture(scope="session")
def raw_sample(data_dir: Path) -> Path:
    return data_dir / "raw" / "meta_Health_and_Personal_Care.sample.jsonl"


@pytest.fixture()
def small_split(data_dir: Path, tmp_path: Path):
    """small_split(n_train, n_validation) -> (train.jsonl, validation.jsonl): the first real items of each
    split, written to this test's folder (training tests want a few real items, not the whole files)."""
    from appraiser.data.io import read_items, write_items

    def make(n_train: int, n_validation: int) -> tuple[Path, Path]:
        train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
        write_items(read_items(data_dir / "train.jsonl", limit=n_train), train)
        write_items(read_items(data_dir / "validation.jsonl", limit=n_validation), validation)
        return train, validation

    return make


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Each test gets its own APPRAISER_HOME so leaderboards and caches never leak between tests."""
    monkeypatch.setenv("APPRAISER_HOME", str(tmp_path / "appraiser-home"))


def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def one_thread():
    """One torch thread: on a shared 2-core machine two threads wait on each other (10x slower)."""
    yield from _one_torch_thread()


@pytest.fixture(scope="module")
def one_thread_module():
    """`one_thread` for a module's shared model."""
    yield from _one_torch_thread()


# ---------------------------------------------------------------- one `appraiser serve` per test session

KEY, OTHER_KEY = "sk-test-one", "sk-test-two"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(home: Path, *args: str, port: int | None = None, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """Start `appraiser serve --port PORT ARGS` with APPRAISER_HOME=home (fp32), its output appended to
    home/serve.log, and wait until /health answers: (the process, its base URL without /v1)."""
    port = port or _free_port()
    exe = shutil.which("appraiser") or str(Path(sys.executable).parent / "appraiser")
    log = home / "serve.log"
    env = {**os.environ, "APPRAISER_HOME": str(home), "APPRAISER_DTYPE": "fp32"}
    with open(log, "a") as fh:  # the child keeps its own handle to the file
        proc = subprocess.Popen(
            [exe, "serve", "--port", str(port), *args], stdout=fh, stderr=subprocess.STDOUT, env=env
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"appraiser serve exited: {log.read_text()}")
        try:
            if httpx2.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx2.HTTPError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail(f"appraiser serve did not come up: {log.read_text()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """(base_url, process, log path) of a running `appraiser serve`."""
    home = tmp_path_factory.mktemp("serve-home")
    proc, base = start_serve(
        home, "--api-key", KEY, "--api-key", OTHER_KEY, "--max-body", "20000", "--max-tokens", "64",
        "--max-prompt-tokens", "1000",
    )  # fmt: skip
    log = home / "serve.log"
    yield f"{base}/v1", proc, log
    proc.terminate()
    proc.wait(timeout=30)
