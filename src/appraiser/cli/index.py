"""`appraiser index build | query`: the retrieval index the knn pricer and the RAG prompts read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from appraiser import config
from appraiser.cli import console, friendly, quiet_libraries

index_app = typer.Typer(no_args_is_help=True, help="Retrieval index of the training pool (similar items, prices).")


def default_index_path() -> Path:
    return config.home() / "index"


@index_app.command("build")
@friendly
def build_command(
    train: Annotated[
        list[Path] | None,
        typer.Option(
            help="Training file or folder (a folder: every train.* in and below it, so extra/train.jsonl too); "
            "repeat for several (default: the data folder's train.jsonl alone)."
        ),
    ] = None,
    held_out: Annotated[
        list[Path] | None,
        typer.Option(help="Splits that must never be in the index (default: <data dir>/validation.jsonl)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Index folder (default: <home>/index).")] = None,
    backend: Annotated[str, typer.Option(help="faiss-flat (exact) | faiss-hnsw | numpy")] = "faiss-flat",
    max_tokens: Annotated[int, typer.Option(help="Tokens of each text the embedding model reads.", min=1)] = 64,
) -> None:
    """Embed the training pool (all-MiniLM-L6-v2) and index it, minus anything in a held-out split."""
    from appraiser.data.io import DataError, describe_sources, read_items, read_pool
    from appraiser.retrieval.index import BACKENDS, RetrievalIndex

    if backend not in BACKENDS:  # before minutes of embedding, not after
        raise DataError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    quiet_libraries()  # the embedding model's "Loading weights" bar would sit in the middle of our two lines

    data = config.default_data_dir()
    sources = train or [data / "train.jsonl"]
    pool = read_pool(sources)
    held: list = []
    for path in held_out or ([data / "validation.jsonl"] if (data / "validation.jsonl").exists() else []):
        held += read_items(path)
    console.print(f"indexing {len(pool):,} items from {escape(describe_sources(sources))} …")
    idx = RetrievalIndex(backend, max_tokens).build(pool, held, progress=True)
    where = idx.save(out or default_index_path())
    i = idx.info
    console.print(
        f"indexed {i['indexed']:,} items ({i['dropped_held_out']} dropped as held-out, "
        f"{i['dropped_duplicates']} as duplicates) in {i['build_seconds']:.1f} s → {escape(str(where))}"
    )


@index_app.command("query")
@friendly
def query_command(
    text: Annotated[str, typer.Argument(help="A product description.")],
    k: Annotated[int, typer.Option("-k", help="Neighbours to show.", min=1)] = 5,
    index: Annotated[Path | None, typer.Option(help="Index folder (default: <home>/index).")] = None,
) -> None:
    """The k most similar indexed items and their prices."""
    from appraiser.data.io import DataError
    from appraiser.items import Item, make_id
    from appraiser.retrieval.index import RetrievalIndex

    if not text.strip():
        raise DataError("the description is empty")
    quiet_libraries()
    idx = RetrievalIndex.load(index or default_index_path())
    item = Item(id=make_id(text), text=text.strip(), price=1.0)  # the price is never read
    found = idx.search([item], k)[0]
    t = Table(title=f"{len(found)} nearest of {len(idx):,} indexed items", box=box.SIMPLE_HEAD)
    for col in ("#", "score", "price", "title"):
        t.add_column(col, justify="right" if col != "title" else "left")
    for rank, n in enumerate(found, start=1):
        t.add_row(str(rank), f"{n.score:.3f}", f"${n.price:,.2f}", escape((n.title or n.text)[:80]))
    console.print(t)


def register(app: typer.Typer) -> None:
    """Add `appraiser index` to the app."""
    app.add_typer(index_app, name="index")
