"""Retrieval-augmented fine-tuning: each training prompt starts with its nearest training items' titles and
prices, never its own; the run records the index it was trained with and is read back with the same context.

Real items, the real embedding model and the real SmolLM2 (a 2-step run); one trained run for the module.
"""

from __future__ import annotations

import json
import math

import pytest

from appraiser.data.io import DataError, read_items, write_items
from appraiser.models import load_tokenizer
from appraiser.pricers.llm import LLMPricer
from appraiser.pricers.rag import local_context
from appraiser.retrieval.index import RetrievalIndex, copy_keys
from appraiser.runs.store import RunStore
from appraiser.training import TrainConfig, start
from appraiser.training.dataset import IGNORE_INDEX, full_prompt
from appraiser.training.trainer import prepare_data, resolve_paths

K = 3
COPY_PRICE = 12345.67  # a same-title copy of a training item under another id, at a price no item has


@pytest.fixture(scope="module")
def setup(data_dir, tmp_path_factory):
    """A 40-item training pool (item 0 has a copy under another id, first in the file), 6 validation items,
    and the pool's index, all under one module-wide home (the embedding cache is shared)."""
    root = tmp_path_factory.mktemp("ragft")
    home = root / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("APPRAISER_HOME", str(home))
    items = read_items(data_dir / "train.jsonl", limit=40)
    copy = items[0].model_copy(update={"id": "copy-of-" + items[0].id, "price": COPY_PRICE})
    pool = [copy, *items]
    train, validation = root / "train.jsonl", root / "validation.jsonl"
    write_items(pool, train)
    write_items(read_items(data_dir / "validation.jsonl", limit=6), validation)
    index = RetrievalIndex().build(read_items(train))
    index.save(root / "index")
    cfg = TrainConfig(
        train=train,
        validation=validation,
        n_train=None,
        max_steps=2,
        batch_size=4,
        max_text_tokens=16,
        head_weight=1.0,
        head_refit="kernel",
        head_refit_items=12,
        probe_every=0,
        rag=K,
        index=root / "index",
        threads=1,
        name="ragft-tiny",
    )
    tok = load_tokenizer(cfg.model)
    yield {"root": root, "home": home, "pool": pool, "train": train, "index": index, "cfg": cfg, "tok": tok}
    mp.undo()


@pytest.fixture(autouse=True)
def _module_home(setup, monkeypatch):
    """Every test here in the module's home, so each text is embedded once for the module."""
    monkeypatch.setenv("APPRAISER_HOME", str(setup["home"]))


@pytest.fixture(scope="module")
def prepared(setup):
    return prepare_data(resolve_paths(setup["cfg"]), setup["tok"])


@pytest.fixture(scope="module")
def run(setup, one_thread_module):
    result = start(setup["cfg"])
    return RunStore().get(result.run_id)


def test_training_examples_show_the_neighbours_prices_never_the_items_own(setup, prepared):
    tok, index = setup["tok"], setup["index"]
    original = setup["pool"][1]
    assert copy_keys(original) & copy_keys(setup["pool"][0])
    indexed = {r["id"] for r in index.records}
    assert setup["pool"][0].id in indexed  # the copy (first in the file) is indexed: the trap is armed
    assert len(prepared.examples) == len(setup["pool"])
    for it, ex in zip(prepared.train_items, prepared.examples, strict=True):
        neighbours = index.search([it], K)[0]
        assert len(neighbours) == K
        assert all(n.id != it.id and not copy_keys(as_item(n)) & copy_keys(it) for n in neighbours)
        prompt = tok.decode(ex.input_ids[: ex.prompt_len])
        assert prompt.startswith(local_context(neighbours, tok))  # their titles and prices, first
        assert all(f"${n.price:.2f}" in prompt for n in neighbours)
        assert prompt.endswith(full_prompt(it, tok, prepared.prompt))  # then the item's own prompt
        if it.id in indexed:  # the item IS in the index, yet never its own neighbour
            assert it.id not in {n.id for n in neighbours}
    by_id = {ex.item_id: ex for ex in prepared.examples}
    for it in setup["pool"][:2]:  # the original and its copy never see each other's price
        other = COPY_PRICE if it is setup["pool"][1] else original.price
        assert f"${other:.2f}" not in tok.decode(by_id[it.id].input_ids[: by_id[it.id].prompt_len])


def as_item(n):
    from appraiser.items import Item

    return Item(id=n.id, text=n.text, price=n.price, title=n.title)


def test_the_audit_passes_and_the_context_is_never_trained(prepared, setup):
    assert prepared.audit.ok, prepared.audit.problems[:3]
    tok = setup["tok"]
    for ex in prepared.examples:
        assert all(lab == IGNORE_INDEX for lab in ex.labels[: ex.prompt_len])
        trained = [lab for lab in ex.labels if lab != IGNORE_INDEX]
        assert tok.decode(trained[:-1]) == ex.completion and trained[-1] == tok.eos_token_id
    assert min(prepared.audit.prompt_tokens) > K * 5  # the context is counted in the prompt


def test_max_length_counts_the_context(setup):
    cfg = setup["cfg"].model_copy(update={"max_length": 60})  # the item's prompt fits, the context does not
    data = prepare_data(resolve_paths(cfg), setup["tok"])
    assert not data.audit.ok
    assert any("max_length 60" in p.reason for p in data.audit.problems)


def test_the_run_records_its_index_and_is_read_with_the_same_context(setup, prepared, run):
    folder = run.folder
    saved = TrainConfig.load(folder / "config.json")
    assert saved.rag == K and saved.index == (setup["root"] / "index").resolve()
    assert saved.index_pool == setup["index"].pool_identity  # ids, prices and texts
    info = json.loads((folder / "final" / "appraiser.json").read_text())
    assert info["rag"] == {"k": K, "index": str(saved.index), "pool": saved.index_pool, "title_tokens": 24}

    pricer = LLMPricer(model=str(folder), method="head")
    assert pricer.rag == K and ",rag=3" in pricer.label
    tok = setup["tok"]
    some = prepared.train_items[:6]
    expected = [full_prompt(it, tok, prepared.prompt, prepared.contexts[it.id]) for it in some]
    assert pricer.prompts(some, tok) == expected  # exactly what it was trained on
    preds = pricer.predict(some[:2])
    assert all(p.price is not None and math.isfinite(p.price) and p.price > 0 for p in preds)


def test_another_pools_index_or_another_k_is_refused(setup, run):
    other = RetrievalIndex().build(setup["pool"][5:])
    other.save(setup["root"] / "other-index")
    with pytest.raises(DataError, match="another training pool"):
        LLMPricer(model=str(run.folder), index=str(setup["root"] / "other-index"))
    with pytest.raises(ValueError, match="fine-tuned with rag=3"):
        LLMPricer(model=str(run.folder), rag=5)
    cfg = setup["cfg"].model_copy(update={"index": setup["root"] / "other-index"})
    with pytest.raises(DataError, match="another training pool"):  # training refuses it too
        prepare_data(resolve_paths(cfg), setup["tok"])
