"""`appraiser hosted …`: the course's hosted fine-tune as commands, against OpenAI or `appraiser serve`.

    appraiser hosted prepare                       # items -> train/validation chat JSONL, checked
    appraiser hosted start --from DIR --eval-on-finish
    appraiser hosted watch RUN                     # follow again (after Ctrl-C, or from another machine)
    appraiser hosted checkpoints RUN | cancel RUN

The job is a run of kind `hosted` in the run store, so `appraiser runs list|show|events|watch` show it
like a local one. The client is the official `openai` SDK (`appraiser.api`); `--provider appraiser` or
`--base-url` points it at another OpenAI-compatible server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from appraiser.cli import console, err_console
from appraiser.cli.progress import check_poll_interval
from appraiser.data.io import DataError

app = typer.Typer(no_args_is_help=True, help="Hosted fine-tuning (OpenAI's API, or `appraiser serve`'s).")

RunArg = Annotated[str, typer.Argument(help="run id, id prefix, name, or 'last'")]
ProviderOpt = Annotated[str | None, typer.Option(help="openai (default), appraiser, or another preset")]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="any OpenAI-compatible /v1 URL")]
KeyEnvOpt = Annotated[str | None, typer.Option("--key-env", help="environment variable holding the key")]
ModelOpt = Annotated[
    str | None, typer.Option(help="base model (default gpt-4o-mini-2024-07-18; smollm2-135m on appraiser serve)")
]
IntervalOpt = Annotated[float, typer.Option(help="seconds between polls of the job")]
ReportOpt = Annotated[str | None, typer.Option("--report-to", help="trackers fed live: trackio, wandb")]
TestOpt = Annotated[Path | None, typer.Option("--test", help="test split for --eval-on-finish (default validation)")]
SizeOpt = Annotated[int, typer.Option("--size", help="test items for --eval-on-finish")]
PlainOpt = Annotated[bool, typer.Option("--plain", help="print events as lines instead of the live chart")]
NotifyOpt = Annotated[
    list[str] | None,
    typer.Option("--notify", help="Apprise URL sent the result card when the job ends (repeatable; not stored)"),
]

CONTINUE = "rerun `appraiser hosted watch {run}` to continue"


def _store() -> Any:
    from appraiser.runs.store import RunStore

    return RunStore()


def _names(report_to: str | None) -> list[str]:
    return [r.strip() for r in (report_to or "").split(",") if r.strip()]


def _default_model(provider: str | None, base_url: str | None) -> str:
    from appraiser.hosted.prepare import DEFAULT_BASE_MODEL

    local = provider == "appraiser" or (base_url or "").startswith(("http://127.", "http://localhost"))
    return "smollm2-135m" if local else DEFAULT_BASE_MODEL


def _print_checks(checked: list[Any]) -> None:
    for c in checked:
        ok = c.refusal() is None
        mark = "[green]ok[/green]" if ok else "[red]would fail[/red]"
        console.print(f"[bold]{escape(c.param)}[/bold] {escape(str(c.path))}: {mark}")
        for line in c.summary_lines():
            console.print(f"  {escape(line)}", highlight=False)


# ---------------------------------------------------------------- prepare


@app.command("prepare")
def prepare_command(
    items: Annotated[Path | None, typer.Option("--items", help="item pool (default: the data dir's train)")] = None,
    validation_items: Annotated[
        Path | None, typer.Option("--validation-items", help="take validation items from this file instead")
    ] = None,
    n_train: Annotated[int, typer.Option("--n-train", help="training examples (the course: 200)")] = 200,
    n_validation: Annotated[int, typer.Option("--n-validation", help="validation examples (0: none)")] = 50,
    seed: Annotated[int, typer.Option(help="shuffle seed for picking items")] = 42,
    shuffle: Annotated[bool, typer.Option("--shuffle/--no-shuffle", help="pick at random, or the first N")] = True,
    exact_cents: Annotated[bool, typer.Option("--exact-cents", help="answer $12.99, not $13.00")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="folder (default .appraiser/hosted/prepared)")] = None,
    model: ModelOpt = None,
    epochs: Annotated[int | None, typer.Option(help="epochs for the estimate (default: OpenAI's rule)")] = None,
    price: Annotated[
        float | None, typer.Option("--price-per-million", help="training $ per 1M tokens (default: the model's)")
    ] = None,
) -> None:
    """Items → train and validation chat JSONL ("Price is $X.00"), checked as OpenAI checks them."""
    from appraiser import config
    from appraiser.data.io import read_items
    from appraiser.hosted.prepare import DEFAULT_BASE_MODEL, prepare, refuse_if_invalid

    if epochs is not None and epochs < 1:
        raise DataError("--epochs must be at least 1")
    pool = read_items(items or config.default_data_dir() / "train.jsonl")
    val_pool = read_items(validation_items) if validation_items is not None else None
    out = out or config.home() / "hosted" / "prepared"
    checked = prepare(
        pool,
        out,
        n_train=n_train,
        n_validation=n_validation,
        validation_pool=val_pool,
        seed=seed if shuffle else None,
        exact_cents=exact_cents,
        model=model or DEFAULT_BASE_MODEL,
        n_epochs=epochs,
        price_per_million=price,
    )
    _print_checks(checked)
    refuse_if_invalid(checked)
    console.print(f"ready: `appraiser hosted start --from {escape(str(out))}`", highlight=False)


# ---------------------------------------------------------------- start / watch


def follow_live(
    store: Any,
    run: Any,
    *,
    interval: float,
    report_to: list[str] | None = None,
    plain: bool = False,
) -> Any:
    """Follow a hosted run's job in the background while the foreground shows it; the final job, or None
    after Ctrl-C (exit 130 with how to continue)."""
    from appraiser.hosted.follow import Background, wait_done

    follower = make_follower(store, run, interval=interval, report_to=report_to)
    try:
        with Background(follower) as bg:
            if plain or not console.is_terminal:
                last = {"id": _last_event_id(store, run.id)}

                def tick() -> None:
                    for e in store.events(run.id, after=last["id"]):
                        console.print(escape(str(e)), soft_wrap=True, highlight=False, emoji=False)
                        last["id"] = e.id

                wait_done(bg, tick)
            else:
                from rich.live import Live

                from appraiser.cli.progress import watch_frame

                with Live(watch_frame(store, run.id), console=console, refresh_per_second=4) as live:
                    wait_done(bg, lambda: live.update(watch_frame(store, run.id)))
    except KeyboardInterrupt:
        err_console.print(f"interrupted; {CONTINUE.format(run=run.id)}", highlight=False)
        raise typer.Exit(130) from None
    return follower.job if follower.job is not None and store.get(run.id).finished else None


def make_follower(store: Any, run: Any, *, interval: float = 5.0, report_to: list[str] | None = None) -> Any:
    """A Follower for a hosted run, with its trackers (default: the ones it was started with)."""
    from appraiser.hosted.follow import Follower
    from appraiser.hosted.jobs import client_for, endpoint_of
    from appraiser.hosted.trackers import check_report_to, open_trackers

    check_poll_interval(interval)
    names = check_report_to(report_to if report_to is not None else run.config.get("report_to") or [])
    client = client_for(endpoint_of(run))
    trackers = open_trackers(names, run.id, run.config) if names else []
    return Follower(store, run.id, client, interval=interval, trackers=trackers, say=_say)


def _say(message: str) -> None:
    err_console.print(escape(message), style="dim", highlight=False, emoji=False)


def _last_event_id(store: Any, run_id: str) -> int:
    events = store.events(run_id)
    for e in events[-10:]:
        console.print(escape(str(e)), soft_wrap=True, highlight=False, emoji=False)
    return events[-1].id if events else 0


def _after_job(
    store: Any, run: Any, job: Any, eval_on_finish: bool, eval_checkpoints: bool, notify: list[str] | None = None
) -> None:
    """What a follow ends with: the outcome line, the evaluations asked for, the notifications, the exit code."""
    run = store.get(run.id)
    if job is None:
        return
    if run.status == "succeeded":
        model = run.config.get("fine_tuned_model")
        console.print(f"[green]succeeded[/green]: {escape(str(model))}", highlight=False, emoji=False)
        try:
            if eval_on_finish:
                _evaluate(store, run, eval_checkpoints)
        finally:
            _notify(store, run.id, notify)
        return
    _notify(store, run.id, notify)
    line = f"job {escape(run.status)}" + (f": {escape(run.error)}" if run.error else "")
    err_console.print(line, highlight=False, emoji=False)
    raise typer.Exit(1)


def _check_notify(urls: list[str] | None) -> list[str]:
    """Every `--notify` URL checked before anything is uploaded."""
    if not urls:
        return []
    from appraiser.notify import check_url

    for url in urls:
        problem = check_url(url)
        if problem:
            raise DataError(f"--notify: {problem}")
    return list(urls)


def _notify(store: Any, run_id: str, urls: list[str] | None) -> None:
    """The run's result card to each URL, once per final state (`appraiser.notify.notify_run`)."""
    if urls:
        from appraiser.notify import notify_run

        notify_run(store, run_id, urls)


def _evaluate(store: Any, run: Any, with_checkpoints: bool) -> None:
    from appraiser import config
    from appraiser.hosted.evaluate import evaluate_models, models_to_evaluate
    from appraiser.hosted.jobs import checkpoints

    cps = checkpoints(run, say=_say) if with_checkpoints else []
    test = run.config.get("eval_test") or str(config.default_data_dir() / "validation.jsonl")
    size = run.config.get("eval_size", 250)
    for s in evaluate_models(store, run, models_to_evaluate(run, cps), test=test, size=size or None, say=_say):
        mae = f"${s['mae']:,.2f}" if s["mae"] is not None else "?"
        console.print(f"{escape(s['model'])} ({escape(s['label'])}): MAE {mae}", highlight=False, emoji=False)


@app.command("start")
def start_command(
    from_dir: Annotated[
        Path | None, typer.Option("--from", help="a `hosted prepare` folder (its train/validation.jsonl)")
    ] = None,
    train: Annotated[Path | None, typer.Option(help="training chat JSONL")] = None,
    validation: Annotated[Path | None, typer.Option(help="validation chat JSONL")] = None,
    model: ModelOpt = None,
    provider: ProviderOpt = None,
    base_url: BaseUrlOpt = None,
    key_env: KeyEnvOpt = None,
    epochs: Annotated[int | None, typer.Option(help="n_epochs (default: the provider's rule)")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="batch_size")] = None,
    lr_multiplier: Annotated[float | None, typer.Option("--lr-multiplier", help="learning_rate_multiplier")] = None,
    seed: Annotated[int | None, typer.Option(help="the job's seed")] = None,
    suffix: Annotated[str | None, typer.Option(help="suffix of the fine-tuned model's name")] = "pricer",
    name: Annotated[str | None, typer.Option(help="run name")] = None,
    report_to: ReportOpt = None,
    eval_on_finish: Annotated[
        bool, typer.Option("--eval-on-finish", help="price the test set with the fine-tuned model, on the leaderboard")
    ] = False,
    eval_checkpoints: Annotated[
        bool, typer.Option("--eval-checkpoints", help="with --eval-on-finish: each checkpoint model too")
    ] = False,
    test: TestOpt = None,
    size: SizeOpt = 250,
    price: Annotated[float | None, typer.Option("--price-per-million", help="training $ per 1M tokens")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="start the job and return; follow it later")] = False,
    interval: IntervalOpt = 5.0,
    plain: PlainOpt = False,
    notify: NotifyOpt = None,
) -> None:
    """Check and upload the files, start the fine-tuning job, record it as a hosted run, and follow it live."""
    from appraiser.api import resolve_endpoint
    from appraiser.hosted.jobs import JobSpec, client_for, start
    from appraiser.hosted.prepare import check_files, refuse_if_invalid
    from appraiser.hosted.trackers import check_report_to

    if from_dir is not None:
        train = train or from_dir / "train.jsonl"
        if validation is None and (from_dir / "validation.jsonl").exists():
            validation = from_dir / "validation.jsonl"
    if train is None:
        raise DataError("name the training file: --from DIR (from `appraiser hosted prepare`) or --train FILE")
    for path in (train, validation):
        if path is not None and not path.is_file():
            raise DataError(f"{path}: no such chat JSONL file")
    for flag, v in (("--epochs", epochs), ("--batch-size", batch_size)):
        if v is not None and v < 1:
            raise DataError(f"{flag} must be at least 1")
    if lr_multiplier is not None and not lr_multiplier > 0:
        raise DataError("--lr-multiplier must be more than 0")
    if size < 0:
        raise DataError("--size must be 0 (all) or more")
    check_poll_interval(interval)
    trackers = check_report_to(_names(report_to))
    urls = _check_notify(notify)
    endpoint = resolve_endpoint(provider, base_url, key_env)
    endpoint.api_key()  # a missing key is an error now, not after the checks
    model = model or _default_model(provider, base_url)
    checked = check_files(train, validation, model=model, n_epochs=epochs, price_per_million=price)
    _print_checks(checked)
    refuse_if_invalid(checked)
    rep = checked[0].report
    estimate = {
        "n_epochs": rep.n_epochs,
        "billed_tokens": rep.billed_tokens,
        "price_per_million": rep.price_per_million,
        "dollars": rep.estimated_cost,
    }
    spec = JobSpec(
        model=model,
        train=train.resolve(),
        validation=validation.resolve() if validation else None,
        n_epochs=epochs,
        batch_size=batch_size,
        learning_rate_multiplier=lr_multiplier,
        seed=seed,
        suffix=suffix or None,
    )
    extra = {
        "report_to": trackers,
        "eval_on_finish": eval_on_finish,
        "eval_checkpoints": eval_checkpoints,
        "eval_test": str(test) if test is not None else None,
        "eval_size": size,
    }
    store = _store()
    run = start(store, client_for(endpoint), spec, name=name, estimate=estimate, extra_config=extra, say=_say)
    console.print(f"run [bold]{escape(run.id)}[/bold]: job {escape(run.external_id or '')}", highlight=False)
    if detach:
        console.print(f"follow it with `appraiser hosted watch {escape(run.id)}`", highlight=False)
        return
    job = follow_live(store, run, interval=interval, plain=plain)
    _after_job(store, run, job, eval_on_finish, eval_checkpoints, urls)


@app.command("watch")
def watch_command(
    run: RunArg,
    interval: IntervalOpt = 5.0,
    report_to: ReportOpt = None,
    eval_on_finish: Annotated[
        bool | None, typer.Option("--eval-on-finish/--no-eval", help="default: as the run was started")
    ] = None,
    plain: PlainOpt = False,
    notify: NotifyOpt = None,
) -> None:
    """Follow a hosted run's job from where the last follower stopped, until it ends."""
    urls = _check_notify(notify)
    store = _store()
    r = store.get(run)
    if r.kind != "hosted":
        raise DataError(f"run {r.id} is a {r.kind} run: watch it with `appraiser runs watch {r.id}`")
    names = _names(report_to) if report_to is not None else None
    job = follow_live(store, r, interval=interval, report_to=names, plain=plain)
    cfg = store.get(r.id).config
    wanted = cfg.get("eval_on_finish", False) if eval_on_finish is None else eval_on_finish
    _after_job(store, r, job, bool(wanted), bool(cfg.get("eval_checkpoints")), urls)


# ---------------------------------------------------------------- checkpoints / cancel


@app.command("checkpoints")
def checkpoints_command(run: RunArg) -> None:
    """The job's checkpoints: step, metrics and the model name to use (or evaluate) each one."""
    from appraiser.hosted.jobs import checkpoints

    cps = checkpoints(_store().get(run), say=_say)
    if not cps:
        console.print("no checkpoints yet")
        return
    table = Table(box=None, header_style="bold")
    for col in ("step", "train loss", "valid loss", "full valid loss", "model"):
        table.add_column(col, justify="left" if col == "model" else "right", overflow="fold")

    def num(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, int | float) else "-"

    for c in cps:
        m = c.metrics
        table.add_row(
            Text(str(c.step_number)),
            *(num(getattr(m, k, None)) for k in ("train_loss", "valid_loss", "full_valid_loss")),
            Text(str(c.fine_tuned_model_checkpoint)),  # text, not markup: "ft:x:ok:..." is no emoji
        )
    console.print(table)


@app.command("cancel")
def cancel_command(run: RunArg) -> None:
    """Cancel the job (the run's status follows the provider's answer)."""
    from appraiser.hosted.jobs import cancel

    store = _store()
    r = store.get(run)
    job = cancel(store, r)
    console.print(f"job {escape(job.id)} is {escape(job.status)}", highlight=False, emoji=False)


def follow_while_watching(store: Any, run: Any, interval: float) -> Any:
    """For `appraiser runs watch` on an unfinished hosted run: the follower in the background (a context).

    When the job cannot be reached from here (no key in this shell, a run that never got a job), the watch
    still shows what the store has, and says why it is not following."""
    import contextlib

    from appraiser.hosted.follow import Background

    try:
        return Background(make_follower(store, run, interval=interval))
    except DataError as e:
        _say(f"not following the job ({e}); showing the run store only")
        return contextlib.nullcontext()


def register(app_: typer.Typer) -> None:
    """Add the `hosted` group to the `appraiser` app."""
    app_.add_typer(app, name="hosted")
