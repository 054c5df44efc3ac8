"""`appraiser predict "TEXT" --model NAME_OR_RUN`: price one product description with a local LLM."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.markup import escape

from appraiser.cli import console, err_console, fail, quiet_libraries
from appraiser.inference.decode import METHODS
from appraiser.items import Item, make_id
from appraiser.models import DEFAULT_MODEL


def predict(
    text: Annotated[str, typer.Argument(help='The product description ("-" reads it from stdin).')],
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="A packaged model (smollm2-135m, gemma3-270m), hub id, model folder or run folder."
        ),
    ] = DEFAULT_MODEL,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="auto (the regression head if the run has one, else expected), expected (price distribution), "
            "greedy (the text the model writes), beam or topk (force expected's digit beam, or the course's "
            "top-K over multi-digit number tokens) or head.",
        ),
    ] = "auto",
    max_text_tokens: Annotated[
        int | None, typer.Option("--max-text-tokens", help="Cut the text to this many tokens (default: the run's).")
    ] = None,
    beam_width: Annotated[int, typer.Option("--beam-width", help="Numbers kept per step by the digit beam.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a sentence.")] = False,
) -> None:
    """Price one product description with a local model: a packaged base model (zero-shot) or a fine-tuned run."""
    from appraiser.pricers.llm import LLMPricer

    quiet_libraries()  # "Loading weights" bars and library warnings would bury the one line of output
    if text == "-":
        text = sys.stdin.read()
    if not text.strip():
        raise fail("empty description")
    if method not in (*METHODS, "auto"):
        raise fail(f"unknown method {method!r}; choose from auto, {', '.join(METHODS)}")
    if beam_width < 1:
        raise fail("--beam-width must be at least 1")
    try:
        pricer = LLMPricer(model=model, method=method, max_text_tokens=max_text_tokens, beam_width=beam_width)
        # The price is never shown to the model; Item only requires a positive one.
        item = Item(id=make_id(text), text=text.strip(), price=1.0)
        with err_console.status(f"Loading {escape(pricer.label)} and pricing…"):
            dist = pricer.distributions([item])[0]
    except (OSError, ValueError) as e:  # what transformers says of a folder or hub id it cannot read
        raise fail(str(e)) from None
    method = pricer.method

    price = None if dist is None else (dist.greedy if method == "greedy" else dist.mean)
    if as_json:
        out = {"model": pricer.label, "method": method, "price": price}
        if dist is not None:
            out |= {
                "mean": dist.mean,
                "median": dist.median,
                "low": dist.low,
                "high": dist.high,
                "greedy": dist.greedy,
                "mass": dist.mass,
                "interval": pricer.interval,
                "raw": dist.raw,
            }
        console.print_json(json.dumps(out))
        if dist is None:
            raise typer.Exit(1)
        return
    if dist is None or price is None:
        err_console.print(f"[red]{escape(pricer.label)} wrote no price[/red]")
        raise typer.Exit(1)
    if method == "greedy":
        console.print(f"[bold]${price:,.2f}[/bold]  (greedy; the model wrote {escape(repr(dist.raw))})")
    elif dist.low is None or dist.high is None:
        console.print(f"[bold]${price:,.2f}[/bold]  (the fine-tune's regression head)")
    else:
        console.print(
            f"[bold]${price:,.2f}[/bold]  (median ${dist.median:,.0f}, {pricer.interval:.0%} interval "
            f"${dist.low:,.0f}–${dist.high:,.0f}; these numbers hold {dist.mass:.0%} of the model's probability)"
        )


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
