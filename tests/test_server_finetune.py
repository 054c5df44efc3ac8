"""The fine-tuning API of `appraiser serve`, driven by the official `openai` SDK against a real server process.

One job-capable server for this module (two API keys, webhooks to a real local HTTP receiver, one torch
thread per worker, a checkpoint every 2 steps) trains the embedded SmolLM2 on a few dozen real items as
chat examples, a few steps per job. The course's whole flow, then: an invalid training file, cancel mid-run,
pause/resume, `kill -9` of the server mid-job and a restart, and two keys that never see each other's things.
"""

from __future__ import annotations

import base64
import http.server
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import KEY, OTHER_KEY, _free_port, start_serve

from appraiser.data.io import read_items
from appraiser.runs.store import RunStore
from appraiser.server.security import default_owner, hash_key
from appraiser.server.webhooks import new_secret

SECRET = new_secret()
SYSTEM = "You estimate prices of items. Reply only with the price, no explanation"
FINISHED = ("succeeded", "failed", "cancelled")


def chat_example(text: str, price: float) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"How much does this cost?\n\n{text}"},
            {"role": "assistant", "content": f"Price is ${price:.2f}"},
        ]
    }


class Receiver:
    """A real HTTP server on a loopback port that keeps every webhook it receives (body, headers)."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append((body, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, job_id: str, deadline_s: float = 120) -> tuple[bytes, dict[str, str]]:
        end = time.time() + deadline_s
        while time.time() < end:
            for body, headers in list(self.received):
                if json.loads(body)["data"]["id"] == job_id:
                    return body, headers
            time.sleep(0.2)
        pytest.fail(f"no webhook for {job_id}")


class JobServer:
    """`appraiser serve` in its own home; `kill9()` and `start()` again on the same home and port."""

    def __init__(self, home: Path, receiver: Receiver):
        self.home, self.port, self.receiver = home, _free_port(), receiver
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = ["--api-key", KEY, "--api-key", OTHER_KEY, "--max-tokens", "16", "--job-threads", "1"]
        args += ["--webhook-url", self.receiver.url, "--webhook-secret", SECRET, "--job-save-every", "2"]
        self.proc, _ = start_serve(self.home, *args, port=self.port)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)

    def runs(self) -> RunStore:
        return RunStore(self.home / "server" / "runs.db", self.home / "server" / "runs")


@pytest.fixture(scope="module")
def ft(tmp_path_factory) -> JobServer:
    server = JobServer(tmp_path_factory.mktemp("ft-home"), Receiver())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def files(ft, data_dir, tmp_path_factory) -> dict[str, Path]:
    """Chat JSONL files of real items (short texts: a few seconds a step on one thread)."""
    folder = tmp_path_factory.mktemp("ft-files")
    train = [chat_example(it.text[:120], it.price) for it in read_items(data_dir / "train.jsonl", limit=16)]
    valid = [chat_example(it.text[:120], it.price) for it in read_items(data_dir / "validation.jsonl", limit=10)]
    out = {"train": folder / "train.jsonl", "valid": folder / "valid.jsonl", "bad": folder / "bad.jsonl"}
    out["train"].write_text("".join(json.dumps(x) + "\n" for x in train))
    out["valid"].write_text("".join(json.dumps(x) + "\n" for x in valid))
    bad = [*train[:4], {"messages": [{"role": "bot", "content": "hi"}]}, {"prompt": "x"}, [1, 2]]
    out["bad"].write_text("".join(json.dumps(x) + "\n" for x in bad) + "not json\n")
    return out


def client(ft: JobServer, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=ft.base, api_key=key, max_retries=0, timeout=300)


def upload(c: openai.OpenAI, path: Path) -> str:
    f = c.files.create(file=path.open("rb"), purpose="fine-tune")
    return c.files.wait_for_processing(f.id).id


def create(c: openai.OpenAI, training_file: str, n_epochs: int = 1, **kw) -> openai.types.fine_tuning.FineTuningJob:
    hp = {"n_epochs": n_epochs, "batch_size": 4}
    return c.fine_tuning.jobs.create(
        model="smollm2-135m",
        training_file=training_file,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
        **kw,
    )


def wait_status(c: openai.OpenAI, job_id: str, statuses: tuple[str, ...], deadline_s: float = 900):
    end = time.time() + deadline_s
    while time.time() < end:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    pytest.fail(f"{job_id} never reached {statuses}")


def steps_seen(c: openai.OpenAI, job_id: str) -> list[int]:
    events = c.fine_tuning.jobs.list_events(job_id, limit=1000).data
    return sorted(e.data["step"] for e in events if e.type == "metrics")


def wait_step(c: openai.OpenAI, job_id: str, step: int, deadline_s: float = 900) -> int:
    end = time.time() + deadline_s
    while time.time() < end:
        seen = steps_seen(c, job_id)
        if seen and seen[-1] >= step:
            return seen[-1]
        time.sleep(0.3)
    pytest.fail(f"{job_id} never reached step {step}")


def wait_worker_stopped(ft: JobServer, job_id: str, deadline_s: float = 300) -> None:
    """The job's worker has ended: its run (named by the job id) left `running` or its process is gone."""
    end = time.time() + deadline_s
    while time.time() < end:
        run = ft.runs().get(job_id)
        if run.status != "running" or run.alive() is False:
            return
        time.sleep(0.3)
    pytest.fail(f"the worker of {job_id} did not stop")


def assert_each_step_once(c: openai.OpenAI, job_id: str, total: int) -> None:
    events = c.fine_tuning.jobs.list_events(job_id, limit=1000).data
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids))
    assert steps_seen(c, job_id) == list(range(1, total + 1))


# ---------------------------------------------------------------- the course's flow


def test_course_flow_upload_train_events_checkpoints_chat_price_webhook(ft, files):
    c = client(ft)
    train_id, valid_id = upload(c, files["train"]), upload(c, files["valid"])
    job = create(c, train_id, validation_file=valid_id, suffix="pricer", seed=7, metadata={"course": "week6"})
    assert job.id.startswith("ftjob-") and job.object == "fine_tuning.job"
    assert job.status in ("validating_files", "queued") and job.training_file == train_id
    assert job.metadata == {"course": "week6"} and job.seed == 7

    done = wait_status(c, job.id, FINISHED)
    assert done.status == "succeeded", done.error
    owner = default_owner(hash_key(KEY))  # "key-" and the key's digest: the org part of the model name
    assert done.fine_tuned_model == f"ft:smollm2-135m:{owner}:pricer:{job.id.removeprefix('ftjob-')[:8]}"
    assert done.hyperparameters.n_epochs == 1 and done.hyperparameters.batch_size == 4
    assert done.hyperparameters.learning_rate_multiplier == 1.0
    assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at >= done.created_at
    assert [j.id for j in c.fine_tuning.jobs.list(limit=10)][0] == job.id

    # events: newest first, OpenAI's wording, each step once; auto-pagination gives the same list
    events = c.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert [e.id for e in c.fine_tuning.jobs.list_events(job.id, limit=3)] == [e.id for e in events]
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    messages = [e.message for e in reversed(events)]
    assert f"Validating training file: {train_id}" in messages
    assert "Files validated, moving job to queued state" in messages
    assert "Fine-tuning job started" in messages
    created = f"New fine-tuned model created: {done.fine_tuned_model}"
    assert messages[-2:] == [created, "The job has successfully completed"]
    assert_each_step_once(c, job.id, 4)
    metrics = {e.data["step"]: e for e in events if e.type == "metrics"}
    assert metrics[1].message.startswith("Step 1/4: training loss=")
    assert set(metrics[1].data) >= {"step", "total_steps", "train_loss", "train_mean_token_accuracy"}
    assert "validation loss=" in metrics[2].message and "full validation loss=" in metrics[2].message
    assert metrics[2].data["valid_loss"] > 0 and metrics[2].data["probe_mae"] >= 0  # probe MAE: Appraiser's extra
    assert all(e.object == "fine_tuning.job.event" and e.level == "info" for e in events)

    # checkpoints: every 2 steps, newest first, each a model of its own
    ckpts = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [k.step_number for k in ckpts] == [4, 2]
    assert all(k.id.startswith("ftckpt_") and k.object == "fine_tuning.job.checkpoint" for k in ckpts)
    assert ckpts[1].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-2"
    assert ckpts[1].metrics.train_loss == metrics[2].data["train_loss"]
    assert f"Checkpoint created at step 2 with Snapshot ID: {ckpts[1].fine_tuned_model_checkpoint}" in messages

    # result file: OpenAI's CSV, base64-encoded
    (result_id,) = done.result_files
    assert c.files.retrieve(result_id).purpose == "fine-tune-results"
    csv_text = base64.b64decode(c.files.content(result_id).read()).decode()
    rows = csv_text.splitlines()
    assert rows[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(rows) == 5

    # the fine-tuned model (and a checkpoint) answers chat completions and prices
    ask = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "How much does this cost?\n\nA drill"}]
    assert done.fine_tuned_model in [m.id for m in c.models.list()]
    for model in (done.fine_tuned_model, ckpts[1].fine_tuned_model_checkpoint):
        r = c.chat.completions.create(model=model, messages=ask, max_tokens=8, temperature=0)
        assert r.model == model and r.choices[0].message.content
    price = httpx.post(
        f"{ft.base}/price",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": done.fine_tuned_model, "items": [{"text": "Cordless drill with two batteries"}]},
        timeout=300,
    )
    assert price.status_code == 200 and price.json()["data"][0]["price"] > 0
    # ... and in the Batch API, for its owner only (a batch line is answered for the key that made the batch)
    line = {"method": "POST", "url": "/v1/chat/completions"}
    line["body"] = {"model": done.fine_tuned_model, "messages": ask, "max_tokens": 4, "temperature": 0}
    answers = {}
    for key in (KEY, OTHER_KEY):
        kc = client(ft, key)
        f = kc.files.create(file=("b.jsonl", json.dumps({**line, "custom_id": "a"}).encode()), purpose="batch")
        batch = kc.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        for _ in range(600):
            if (batch := kc.batches.retrieve(batch.id)).status in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.2)
        out = batch.output_file_id or batch.error_file_id
        answers[key] = json.loads(kc.files.content(out).read())["response"]["status_code"]
    assert answers == {KEY: 200, OTHER_KEY: 404}

    # the webhook, received by a real HTTP server and verified by the SDK
    body, headers = ft.receiver.wait_for(job.id)
    event = c.webhooks.unwrap(body, headers, secret=SECRET)
    assert event.type == "fine_tuning.job.succeeded" and event.data.id == job.id and event.object == "event"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        c.webhooks.unwrap(body, headers, secret=new_secret())

    # another key sees none of it: 404 everywhere, never 403
    other = client(ft, OTHER_KEY)
    assert job.id not in [j.id for j in other.fine_tuning.jobs.list()]
    assert done.fine_tuned_model not in [m.id for m in other.models.list()]
    for call in (
        lambda: other.fine_tuning.jobs.retrieve(job.id),
        lambda: other.fine_tuning.jobs.list_events(job.id),
        lambda: other.fine_tuning.jobs.checkpoints.list(job.id),
        lambda: other.fine_tuning.jobs.cancel(job.id),
        lambda: other.files.retrieve(train_id),
        lambda: other.models.retrieve(done.fine_tuned_model),
        lambda: other.chat.completions.create(model=done.fine_tuned_model, messages=ask, max_tokens=2),
        lambda: create(other, train_id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    other_price = httpx.post(
        f"{ft.base}/price",
        headers={"Authorization": f"Bearer {OTHER_KEY}"},
        json={"model": done.fine_tuned_model, "items": [{"text": "Cordless drill"}]},
        timeout=60,
    )
    assert other_price.status_code == 404
    health = httpx.get(f"{ft.base[:-3]}/health", headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=60)
    assert done.fine_tuned_model not in health.json()["models"]  # loaded, but not for this key

    # the dashboard shows the job's run (named by the job id) with its loss curve to its owner only
    def dash(key: str, path: str) -> httpx.Response:
        return httpx.get(f"{ft.base[:-3]}/dashboard/api{path}", headers={"Authorization": f"Bearer {key}"}, timeout=60)

    (run,) = [r for r in dash(KEY, "/runs").json()["runs"] if r["name"] == job.id]
    assert run["status"] == "succeeded" and dash(KEY, f"/runs/{run['id']}").json()["curves"]["loss"]["n"] == 4
    assert job.id not in [r["name"] for r in dash(OTHER_KEY, "/runs").json()["runs"]]
    assert dash(OTHER_KEY, f"/runs/{run['id']}").status_code == 404


# ---------------------------------------------------------------- bad input


def test_invalid_training_file_fails_the_job_as_openai_does(ft, files):
    c = client(ft)
    job = create(c, upload(c, files["bad"]))
    failed = wait_status(c, job.id, FINISHED, deadline_s=120)
    assert failed.status == "failed" and failed.fine_tuned_model is None
    assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
    for category in ("invalid_json", "data_type", "missing_messages_list", "unrecognized_role"):
        assert category in failed.error.message
    errors = [e for e in c.fine_tuning.jobs.list_events(job.id) if e.level == "error"]
    assert errors and errors[0].message == failed.error.message
    body, headers = ft.receiver.wait_for(job.id)
    assert c.webhooks.unwrap(body, headers, secret=SECRET).type == "fine_tuning.job.failed"

    # its result card, to the URL the job named in its metadata (Apprise json:// to a real receiver)
    told = Receiver()
    hook = told.url.replace("http://", "json://")
    with pytest.raises(openai.BadRequestError) as bad_url:
        create(c, train_id := upload(c, files["bad"]), metadata={"notify": "nonsense"})
    assert bad_url.value.body["param"] == "metadata"
    job = create(c, train_id, metadata={"notify": hook})
    assert wait_status(c, job.id, FINISHED, deadline_s=120).status == "failed"
    end = time.time() + 60
    while not told.received and time.time() < end:
        time.sleep(0.2)
    assert len(told.received) == 1
    card = json.loads(told.received[0][0])
    assert card["title"].endswith("failed") and job.id in card["title"]
    assert "Last error lines" in card["message"] and "invalid_json" in card["message"]
    assert f'list_events("{job.id}")' in card["message"] and "appraiser runs" not in card["message"]

    few = files["bad"].with_name("few.jsonl")
    few.write_text("".join(line + "\n" for line in files["train"].read_text().splitlines()[:5]))
    small = wait_status(c, create(c, upload(c, few)).id, FINISHED, deadline_s=120)
    assert small.status == "failed" and "at least 10 examples" in small.error.message


def test_bad_requests_are_openai_errors(ft, files):
    c = client(ft)
    train_id = upload(c, files["train"])
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model="gpt-9", training_file=train_id)
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as e:
        c.fine_tuning.jobs.create(model="smollm2-135m", training_file="file-nope")
    assert e.value.body["param"] == "training_file"
    batch_file = c.files.create(file=files["train"].open("rb"), purpose="batch")
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model="smollm2-135m", training_file=batch_file.id)
    assert e.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model="smollm2-135m", training_file=train_id, hyperparameters={"n_epochs": 0})
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model="smollm2-135m", training_file=train_id, method={"type": "dpo"})
    assert e.value.body["param"] == "method.type"
    with pytest.raises(openai.NotFoundError):
        c.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="ft:smollm2-135m:key-0::nope", messages=[{"role": "user", "content": "x"}])


# ---------------------------------------------------------------- control


def test_cancel_stops_within_a_step(ft, files):
    c = client(ft)
    job = create(c, upload(c, files["train"]), n_epochs=3)  # 12 steps
    at = wait_step(c, job.id, 1)
    cancelled = c.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    wait_worker_stopped(ft, job.id)
    assert max(steps_seen(c, job.id)) <= at + 1
    assert c.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    body, headers = ft.receiver.wait_for(job.id)
    assert c.webhooks.unwrap(body, headers, secret=SECRET).type == "fine_tuning.job.cancelled"
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.cancel(job.id)


@pytest.mark.slow
def test_pause_saves_a_checkpoint_and_resume_finishes(ft, files):
    c = client(ft)
    job = create(c, upload(c, files["train"]), n_epochs=2)  # 8 steps
    wait_step(c, job.id, 1)
    assert c.fine_tuning.jobs.pause(job.id).status == "paused"
    wait_worker_stopped(ft, job.id)
    paused_at = max(steps_seen(c, job.id))
    assert c.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert paused_at in [k.step_number for k in c.fine_tuning.jobs.checkpoints.list(job.id)]
    assert c.fine_tuning.jobs.resume(job.id).status in ("queued", "running")
    done = wait_status(c, job.id, FINISHED)
    assert done.status == "succeeded", done.error
    assert_each_step_once(c, job.id, 8)
    messages = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert "Fine-tuning job paused" in messages and "Fine-tuning job resumed" in messages


# ---------------------------------------------------------------- restart


@pytest.mark.slow  # the default suite's time budget; `python -m pytest -m slow` runs it
def test_kill_9_mid_job_resumes_from_its_checkpoint(ft, files):
    c = client(ft)
    train_id = upload(c, files["train"])
    job = create(c, train_id, n_epochs=2)  # 8 steps, checkpoints at 2, 4, 6, 8
    wait_step(c, job.id, 3)
    files_before = sorted(f.id for f in c.files.list())
    jobs_before = sorted(j.id for j in c.fine_tuning.jobs.list(limit=100))
    ft.kill9()
    wait_worker_stopped(ft, job.id)  # the worker died with the server
    ft.start()
    done = wait_status(c, job.id, FINISHED)
    assert done.status == "succeeded", done.error
    assert_each_step_once(c, job.id, 8)
    steps = [k.step_number for k in c.fine_tuning.jobs.checkpoints.list(job.id)]
    assert steps == [8, 6, 4, 2]
    assert sorted(j.id for j in c.fine_tuning.jobs.list(limit=100)) == jobs_before
    assert set(files_before) <= {f.id for f in c.files.list()}  # plus the new result file
    messages = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert messages.count("Fine-tuning job started") == 1
    assert messages.count("The job has successfully completed") == 1
    body, headers = ft.receiver.wait_for(job.id)
    assert c.webhooks.unwrap(body, headers, secret=SECRET).data.id == job.id
