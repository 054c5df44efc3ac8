"""A fine-tuning job through `appraiser serve` vs training directly, on the same items and steps.

    nice -n 10 python benchmarks/hosted.py [--items 32] [--steps 16] [--rounds 1]

Per round, one after another on the same items and number of steps (batch 4, one torch thread, no probe,
one checkpoint at the end):

- `appraiser train` on the items (the course prompt), process start to exit;
- the job's worker alone (`python -m appraiser.server.jobworker`, no server around it) on the same items as
  chat examples (the course prompt, its text cut to the same token budget, as the user's message; the
  chat template and a system message add ~40 tokens per example), process start to exit;
- the same chat file as a job through a live `appraiser serve` and the official SDK: `jobs.create` until
  `retrieve` says succeeded (validation, queueing, the worker's start and training, the result file);
- the same job again, polling `list_events` every 0.1 s: the delay from each step (the time its metrics
  row was written, read from the server's run store) to the first poll that shows its event;
- recovery (skip with `--no-kill`): a job on a fresh server with a checkpoint every steps/4, `kill -9` of the
  server past the middle, a restart: the step it resumed from, the steps redone, how long until the first
  new step, and whether every step's event is there exactly once.

Printed: wall times, the overhead of the job over both direct runs, and the event delay p50/p99.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

KEY = "sk-bench"
SYSTEM = "You estimate prices of items. Reply only with the price, no explanation"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_inputs(folder: Path, n: int) -> tuple[Path, Path]:
    from appraiser.config import default_data_dir
    from appraiser.data.io import read_items, write_items
    from appraiser.data.prompts import PromptConfig, make_completion, make_prompt
    from appraiser.models import load_tokenizer
    from appraiser.training.config import TrainConfig

    items = read_items(default_data_dir() / "train.jsonl", limit=n)
    items_path, chat_path = folder / "items.jsonl", folder / "chat.jsonl"
    write_items(items, items_path)
    tok = load_tokenizer("smollm2-135m")
    config = PromptConfig(max_text_tokens=TrainConfig().max_text_tokens)  # what `appraiser train` prompts with
    with chat_path.open("w") as f:
        for it in items:  # the course prompt as the user's message; its completion after "Price is $"
            prompt = make_prompt(it, tok, config).removesuffix("Price is $").strip()
            msgs = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": f"Price is ${make_completion(it.price, config)}"},
            ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return items_path, chat_path


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "APPRAISER_HOME": str(home), "APPRAISER_DTYPE": "fp32", "TOKENIZERS_PARALLELISM": "false"}


def run_cli(folder: Path, items: Path, n: int, steps: int) -> float:
    home = folder / "cli-home"
    exe = shutil.which("appraiser") or str(Path(sys.executable).parent / "appraiser")
    cmd = [exe, "train", "--train", str(items), "--n-train", str(n), "--max-steps", str(steps), "--batch-size", "4"]
    cmd += ["--probe-every", "0", "--save-every", str(steps), "--threads", "1", "--validation", str(items)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env_for(home), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def job_settings(steps: int):
    from appraiser.server import ServerSettings

    return ServerSettings(job_threads=1, job_max_steps=steps, job_save_every=steps)


def run_worker_alone(folder: Path, chat: Path, steps: int) -> float:
    """The job's worker process on its own: the job is created and validated in-process, no server."""
    from appraiser.server.jobrunner import JobRunner
    from appraiser.server.jobs import JobRequest
    from appraiser.server.store import ServerStore

    root = folder / "alone"
    store = ServerStore(root)
    runner = JobRunner(store, job_settings(steps))
    fid = store.add_file("default", "chat.jsonl", "fine-tune", chat.read_bytes())["id"]
    req = JobRequest(model="smollm2-135m", training_file=fid, hyperparameters={"n_epochs": 50, "batch_size": 4})
    job = runner.create("default", req)
    runner.validate(job["id"])
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "appraiser.server.jobworker", str(root), job["id"], str(os.getpid())],
        env=env_for(folder / "alone-home"),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - t0
    assert store.get_job(None, job["id"])["status"] == "succeeded"
    return elapsed


class Server:
    def __init__(self, folder: Path, steps: int, save_every: int | None = None, name: str = "serve-home"):
        self.home, self.port = folder / name, _free_port()
        self.steps, self.save_every = steps, save_every or steps
        self.home.mkdir(parents=True, exist_ok=True)
        self.start()

    def start(self) -> None:
        exe = shutil.which("appraiser") or str(Path(sys.executable).parent / "appraiser")
        cmd = [exe, "serve", "--port", str(self.port), "--api-key", KEY, "--job-threads", "1"]
        cmd += ["--job-max-steps", str(self.steps), "--job-save-every", str(self.save_every)]
        cmd += ["--log-level", "warning"]
        self.log = open(self.home / "serve.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=env_for(self.home), stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=KEY, max_retries=2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)

    def step_times(self, job_id: str) -> dict[int, float]:
        db = sqlite3.connect(self.home / "server" / "runs.db")
        try:
            rows = db.execute(
                "SELECT m.step, m.time FROM metrics m JOIN runs r ON r.id = m.run_id"
                " WHERE r.name = ? AND m.name = 'loss'",
                (job_id,),
            ).fetchall()
        finally:
            db.close()
        return dict(rows)

    def create(self, chat: Path) -> str:
        c = self.client
        fid = c.files.wait_for_processing(c.files.create(file=chat.open("rb"), purpose="fine-tune").id).id
        return c.fine_tuning.jobs.create(
            model="smollm2-135m",
            training_file=fid,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 4}}},
        ).id

    def steps_seen(self, job_id: str) -> list[int]:
        events = self.client.fine_tuning.jobs.list_events(job_id, limit=1000).data
        return sorted(e.data["step"] for e in events if e.type == "metrics")

    def kill_and_restart(self, chat: Path, at_step: int) -> dict[str, float]:
        """kill -9 the server once the job is past `at_step`, start it again, let the job finish."""
        c = self.client
        job_id = self.create(chat)
        while not (seen := self.steps_seen(job_id)) or seen[-1] < at_step:
            time.sleep(0.2)
        killed_at = seen[-1]
        self.proc.kill()
        self.proc.wait()
        t0, wall0 = time.perf_counter(), time.time()
        self.start()
        up = time.perf_counter() - t0
        while not any(t > wall0 for t in self.step_times(job_id).values()):  # the resumed worker's first step
            time.sleep(0.1)
        first_new = time.perf_counter() - t0
        while (status := c.fine_tuning.jobs.retrieve(job_id).status) not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.5)
        steps = self.steps_seen(job_id)
        ids = [e.id for e in c.fine_tuning.jobs.list_events(job_id, limit=1000).data]
        db = sqlite3.connect(self.home / "server" / "runs.db")
        try:
            (resumed,) = db.execute(
                "SELECT e.step FROM events e JOIN runs r ON r.id = e.run_id WHERE r.name = ?"
                " AND e.message LIKE 'Resuming from%'",
                (job_id,),
            ).fetchone()
        finally:
            db.close()
        return {
            "status_ok": float(status == "succeeded"),
            "killed_at": killed_at,
            "resumed_from": resumed,
            "redone": killed_at - resumed,
            "server_up_s": up,
            "first_new_step_s": first_new,
            "steps_once": float(steps == list(range(1, self.steps + 1)) and len(ids) == len(set(ids))),
        }

    def job(self, chat: Path, poll_events: bool) -> tuple[float, list[float]]:
        c = self.client
        t0 = time.perf_counter()
        job_id = self.create(chat)
        seen: dict[int, float] = {}
        while True:
            if poll_events:
                for e in c.fine_tuning.jobs.list_events(job_id, limit=5).data:
                    if e.type == "metrics" and e.data["step"] not in seen:
                        seen[e.data["step"]] = time.time()
            status = c.fine_tuning.jobs.retrieve(job_id).status
            if status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.1 if poll_events else 0.25)
        elapsed = time.perf_counter() - t0
        assert status == "succeeded", status
        logged = self.step_times(job_id)
        return elapsed, [seen[s] - logged[s] for s in seen if s in logged]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-kill", action="store_true", help="skip the kill -9 / restart measurement")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="appraiser-bench-hosted-"))
    items, chat = write_inputs(folder, args.items)
    server = Server(folder, args.steps)
    cli, alone, serve, delays = [], [], [], []
    try:
        for r in range(args.rounds):
            cli.append(run_cli(folder / f"r{r}", items, args.items, args.steps))
            alone.append(run_worker_alone(folder / f"r{r}", chat, args.steps))
            serve.append(server.job(chat, poll_events=False)[0])
            delays += server.job(chat, poll_events=True)[1]
            print(f"round {r + 1}: train {cli[-1]:.1f}s, worker alone {alone[-1]:.1f}s, serve {serve[-1]:.1f}s")
        recovery = None
        if not args.no_kill:
            server.stop()
            server = Server(folder, args.steps, save_every=max(1, args.steps // 4), name="kill-home")
            recovery = server.kill_and_restart(chat, at_step=args.steps // 2 + 1)
    finally:
        server.stop()
    med = statistics.median
    print(f"\n{args.items} items, {args.steps} steps, batch 4, 1 torch thread, {args.rounds} round(s) (medians):")
    print(f"  appraiser train (course prompt)      {med(cli):7.1f} s")
    print(f"  job worker alone (chat examples)     {med(alone):7.1f} s")
    print(f"  job through appraiser serve + SDK    {med(serve):7.1f} s")
    print(f"  overhead vs worker alone             {100 * (med(serve) / med(alone) - 1):+6.1f} %")
    print(f"  overhead vs appraiser train          {100 * (med(serve) / med(cli) - 1):+6.1f} %")
    if delays:
        print(
            f"  step -> list_events delay            p50 {1000 * pct(delays, 0.5):.0f} ms, "
            f"p99 {1000 * pct(delays, 0.99):.0f} ms, max {1000 * max(delays):.0f} ms ({len(delays)} steps, 0.1 s polls)"
        )
    if recovery:
        r = recovery
        print(
            f"  kill -9 at step {r['killed_at']:.0f} (checkpoints every {max(1, args.steps // 4)}): resumed from step "
            f"{r['resumed_from']:.0f} ({r['redone']:.0f} steps redone); server up {r['server_up_s']:.1f} s, first new "
            f"step {r['first_new_step_s']:.1f} s after restart; succeeded: {bool(r['status_ok'])}; every step's "
            f"event once: {bool(r['steps_once'])}"
        )
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
