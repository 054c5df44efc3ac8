"""`appraiser serve`: run the OpenAI-compatible server on this machine.

Binds 127.0.0.1 unless told otherwise, and refuses a non-loopback `--host` unless API keys are configured
(checked before anything binds). Keys come from `--api-key` (repeatable), `$APPRAISER_API_KEY`, or a keys
file of SHA-256 digests (`--keys-file`; `--hash-key K` prints the digest line to put in it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from appraiser.api.providers import is_loopback_host
from appraiser.cli import console, friendly, quiet_libraries
from appraiser.data.io import DataError


def allowed_hosts(host: str, extra: list[str] | None = None) -> list[str] | None:
    """The Host names a server bound to `host` answers (security.SameOrigin): on loopback this machine's own
    names, so a rebound DNS name reads nothing; elsewhere any (keys guard it), unless `extra` names them."""
    from appraiser.server.security import LOOPBACK_NAMES

    for name in extra or []:
        if not name or any(c in name for c in "/:@ ") and not name.startswith("["):
            raise DataError(f"--allow-host takes a host name (proxy.example), not {name!r}")
    if is_loopback_host(host):
        return [*LOOPBACK_NAMES, host, *(extra or [])]
    return [host, *extra] if extra else None


@friendly
def serve_command(
    host: Annotated[str, typer.Option(help="Address to bind (a non-loopback one needs API keys).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one).", min=0, max=65535)] = 8321,
    api_key: Annotated[
        list[str] | None,
        typer.Option("--api-key", help="A key clients must send (repeatable; default $APPRAISER_API_KEY)."),
    ] = None,
    keys_file: Annotated[Path | None, typer.Option(help="File of SHA-256 key digests, one per line \\[owner].")] = None,
    hash_key: Annotated[
        str | None,
        typer.Option(
            "--hash-key", help="Print the keys-file line for KEY (its digest; an owner name may follow it) and exit."
        ),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            help="A Host name to answer besides the bound address (repeatable; e.g. a reverse proxy's). On "
            "loopback only 127.0.0.1, localhost and ::1 are answered, which stops DNS rebinding.",
        ),
    ] = None,
    max_body: Annotated[int, typer.Option(help="Largest request body in bytes.", min=1)] = 1_000_000,
    max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.", min=1)] = 512,
    max_prompt_tokens: Annotated[
        int, typer.Option(help="Longest prompt in tokens (and never beyond the model's context).", min=1)
    ] = 4096,
    max_loaded: Annotated[int, typer.Option(help="Models kept in memory at once.", min=1)] = 2,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    max_jobs: Annotated[int, typer.Option(help="Fine-tuning jobs trained at once (one process each).", min=1)] = 1,
    webhook_url: Annotated[
        str | None, typer.Option(help="POST fine_tuning.job.succeeded|failed|cancelled webhooks here.")
    ] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(help="whsec_… secret that signs webhooks (default $APPRAISER_WEBHOOK_SECRET)."),
    ] = None,
    job_save_every: Annotated[
        int | None, typer.Option(help="Checkpoint fine-tuning jobs every N steps (default: every epoch).", min=1)
    ] = None,
    job_max_steps: Annotated[int | None, typer.Option(help="Cap every fine-tuning job at N steps.", min=1)] = None,
    job_threads: Annotated[
        int | None, typer.Option(help="torch threads per fine-tuning worker (default: torch's choice).", min=1)
    ] = None,
    notify: Annotated[
        list[str] | None,
        typer.Option(
            "--notify",
            help="Apprise URL (mailto://, json://, slack://, ...) sent each fine-tuning job's result card when it "
            "ends; repeatable. A job can ask for its own with metadata={'notify': 'URL ...'}.",
        ),
    ] = None,
) -> None:
    """Serve Appraiser's models over the OpenAI API (chat completions, models) plus /v1/price."""
    from appraiser.server import ServerSettings, create_app
    from appraiser.server.security import hash_key as digest
    from appraiser.server.security import key_table

    if hash_key is not None:
        # the digest alone is a line whose key owns its data by itself; add a name after it to name the owner
        console.print(digest(hash_key), soft_wrap=True, highlight=False)
        return
    keys = key_table(api_key or [k for k in [os.environ.get("APPRAISER_API_KEY")] if k], keys_file)
    if not is_loopback_host(host) and not keys:
        raise DataError(f"refusing to bind {host} without API keys: pass --api-key or --keys-file")
    quiet_libraries()
    import uvicorn

    from appraiser.notify import check_url

    for url in notify or []:
        problem = check_url(url)
        if problem is not None:
            raise DataError(f"--notify: {problem}")
    secret = webhook_secret or os.environ.get("APPRAISER_WEBHOOK_SECRET")
    if webhook_url and not secret:
        raise DataError("--webhook-url needs --webhook-secret (or $APPRAISER_WEBHOOK_SECRET): webhooks are signed")
    app = create_app(
        ServerSettings(
            keys=keys,
            max_body_bytes=max_body,
            max_tokens_cap=max_tokens,
            max_prompt_tokens=max_prompt_tokens,
            max_loaded=max_loaded,
            max_jobs=max_jobs,
            webhook_url=webhook_url,
            webhook_secret=secret,
            job_save_every=job_save_every,
            job_max_steps=job_max_steps,
            job_threads=job_threads,
            notify=list(notify or []),
            allowed_hosts=allowed_hosts(host, allow_host),
        )
    )
    logging.getLogger("appraiser.server").setLevel(log_level.upper())
    console.print(f"appraiser serve on http://{host}:{port}/v1 ({'API keys required' if keys else 'no API key'})")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
