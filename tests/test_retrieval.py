"""Training pools from several files, and the retrieval index: no leakage, exact against FAISS, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest

from appraiser.data.io import DataError, pool_files, read_items, read_pool, write_items

# ---------------------------------------------------------------- --train: several files or a folder


def test_pool_of_a_folder_reads_its_train_files_never_validation(data_dir: Path):
    files = pool_files(data_dir)
    assert files[0] == data_dir / "train.jsonl" and data_dir / "extra" / "train.jsonl" in files
    assert all(f.name.startswith("train.") for f in files)  # validation.jsonl and raw/ are never read


def test_pool_of_several_files_is_one_pool_without_repeats(data_dir: Path, tmp_path: Path):
    a, b = tmp_path / "a.jsonl", tmp_path / "sub" / "b.jsonl"
    items = read_items(data_dir / "train.jsonl", limit=30)
    write_items(items[:20], a)
    write_items(items[10:], b)  # 10 ids in both files
    pool = read_pool([a, b])
    assert [it.id for it in pool] == [it.id for it in items]
    assert pool_files([a, a]) == [a]
    # a folder without train.* files gives its data files, not its validation/test ones
    write_items(items[:3], tmp_path / "sub" / "validation.jsonl")
    assert pool_files(tmp_path / "sub") == [b]


def test_pool_errors_name_the_path(tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        read_pool([tmp_path / "missing.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no training files"):
        pool_files(tmp_path / "empty")


# ---------------------------------------------------------------- the retrieval index


@pytest.fixture(scope="session")
def emb_dir(tmp_path_factory) -> Path:
    """One embedding cache for the whole session: each text is embedded once, however many tests read it."""
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="session")
def pool_and_held(data_dir: Path):
    return read_items(data_dir / "train.jsonl", limit=200), read_items(data_dir / "validation.jsonl", limit=20)


def _index(pool, held, emb_dir, backend="faiss-flat"):
    from appraiser.retrieval.index import RetrievalIndex

    return RetrievalIndex(backend, cache_dir=emb_dir).build(pool, held)


def test_index_never_holds_a_held_out_item_nor_its_copy(pool_and_held, emb_dir):
    pool, held = pool_and_held
    copy = held[0].model_copy(update={"id": "copy-of-validation-0"})  # same title, another id
    leaked = held[1]  # the very same item
    idx = _index([*pool, copy, leaked], held, emb_dir)
    ids = {r["id"] for r in idx.records}
    assert copy.id not in ids and leaked.id not in ids
    assert idx.info["dropped_held_out"] == 2 and len(idx) <= len(pool)


def test_an_item_never_retrieves_itself_or_a_duplicate(pool_and_held, emb_dir):
    from appraiser.retrieval.index import copy_keys

    pool, held = pool_and_held
    idx = _index(pool, held, emb_dir)
    queries = pool[:40]
    twins = [it.model_copy(update={"id": f"twin-{i}"}) for i, it in enumerate(queries)]  # another id, same title
    for q, found in zip(queries + twins, idx.search(queries + twins, k=5), strict=True):
        assert len(found) == 5
        assert all(n.id != q.id for n in found)
        own = {r["id"] for r, keys in zip(idx.records, idx.record_keys, strict=True) if keys & copy_keys(q)}
        assert not own & {n.id for n in found}
    # without the exclusion an item's nearest neighbour is itself: the rule is what keeps it out
    scores, rows = idx.searcher.search(idx.vectors[:5], 1)
    assert list(rows[:, 0]) == [0, 1, 2, 3, 4]


def test_faiss_flat_finds_what_exact_numpy_search_finds(pool_and_held, emb_dir):
    pool, held = pool_and_held
    a, b = _index(pool, held, emb_dir, "faiss-flat"), _index(pool, held, emb_dir, "numpy")
    qa, qb = a.search(held, k=5), b.search(held, k=5)
    assert [[n.id for n in ns] for ns in qa] == [[n.id for n in ns] for ns in qb]


def test_index_refuses_another_pool(pool_and_held, emb_dir):
    pool, held = pool_and_held
    idx = _index(pool, held, emb_dir)
    idx.check_pool(pool)
    with pytest.raises(DataError, match="another training pool"):
        idx.check_pool(pool[:-1])
    rewritten = [it.model_copy(update={"text": f"summary: {it.title}"}) for it in pool]  # same ids and prices
    with pytest.raises(DataError, match="other texts"):
        idx.check_pool(rewritten)
    # a RAG fine-tune records its index's pool; an index rebuilt from the summaries is another one
    summaries = _index(rewritten, held, emb_dir)
    assert summaries.pool_fingerprint == idx.pool_fingerprint and not summaries.same_pool(idx.pool_identity)
    assert idx.same_pool(idx.pool_identity) and idx.same_pool(idx.pool_fingerprint)  # a run from before texts


def test_saved_and_reloaded_index_searches_the_same(pool_and_held, emb_dir, tmp_path):
    from appraiser.retrieval.index import RetrievalIndex

    pool, held = pool_and_held
    idx = _index(pool, held, emb_dir)
    back = RetrievalIndex.load(idx.save(tmp_path / "idx"), cache_dir=emb_dir)
    assert back.pool_fingerprint == idx.pool_fingerprint and len(back) == len(idx)
    assert [[(n.id, n.price) for n in ns] for ns in back.search(held, 5)] == [
        [(n.id, n.price) for n in ns] for ns in idx.search(held, 5)
    ]
    with pytest.raises(DataError, match="not a retrieval index"):
        RetrievalIndex.load(tmp_path)


# ---------------------------------------------------------------- the knn pricer and the RAG prompts


def test_knn_pricer_prices_from_neighbours_never_itself(pool_and_held, emb_dir, tmp_path):
    from appraiser.pricers import registry
    from appraiser.pricers.base import Pricer

    pool, held = pool_and_held
    knn = registry.create("knn", k=1, cache_dir=emb_dir).fit(pool, held)
    # priced with k=1 on its own training items: never its own price back (it would be an exact hit)
    own = [p.price for p in knn.predict(pool[:30])]
    assert sum(abs(g - it.price) < 1e-6 for g, it in zip(own, pool[:30], strict=True)) < 5
    back = Pricer.load(knn.save(tmp_path / "knn.pkl"))
    assert [p.price for p in back.predict(held)] == [p.price for p in knn.predict(held)]


def test_knn_fails_an_item_whose_every_neighbour_is_its_copy(pool_and_held, emb_dir):
    """A one-item pool and a test item with the same title: no neighbour is left, which was an IndexError."""
    from appraiser.pricers import registry

    pool, held = pool_and_held
    copy = held[0].model_copy(update={"id": "copy-of-held-0", "text": held[0].text + " (another listing)"})
    knn = registry.create("knn", k=3, cache_dir=emb_dir).fit([pool[0]])
    (pred,) = knn.predict([pool[0].model_copy(update={"id": "p0-copy", "text": pool[0].text + " again"})])
    assert pred.price is None
    assert knn.predict([copy])[0].price == pytest.approx(pool[0].price)  # another product: its one neighbour


def test_knn_reuses_a_built_index_only_for_its_own_pool(pool_and_held, emb_dir, tmp_path):
    from appraiser.pricers import registry

    pool, held = pool_and_held
    folder = _index(pool, held, emb_dir).save(tmp_path / "idx")
    own = registry.create("knn", cache_dir=emb_dir).fit(pool, held)
    reused = registry.create("knn", index=str(folder), cache_dir=emb_dir).fit(pool)
    assert [p.price for p in reused.predict(held)] == pytest.approx([p.price for p in own.predict(held)])
    with pytest.raises(DataError, match="another training pool"):
        registry.create("knn", index=str(folder), cache_dir=emb_dir).fit(pool[:150])


def test_rag_context_shows_neighbours_and_prices(pool_and_held, emb_dir):
    from appraiser.pricers.api import messages_for
    from appraiser.pricers.rag import CONTEXT_INTRO, api_context

    pool, held = pool_and_held
    found = _index(pool, held, emb_dir).search(held[:1], 3)[0]
    user = messages_for(held[0], True, api_context(found))[1]["content"]
    assert user.startswith(CONTEXT_INTRO) and user.endswith(held[0].text)
    assert all(f"Price is ${n.price:.2f}" in user for n in found)
    assert user.index("And now the question for you:") < user.index("How much does this cost?")
    assert held[0].id not in {n.id for n in found}


def test_llm_rag_prompts_put_neighbours_before_the_question(pool_and_held, emb_dir, tmp_path, one_thread):
    from appraiser.pricers.llm import LLMPricer

    pool, held = pool_and_held
    folder = _index(pool, held, emb_dir).save(tmp_path / "idx")
    plain = LLMPricer(model="smollm2-135m", method="greedy")
    rag = LLMPricer(model="smollm2-135m", method="greedy", rag=2, index=str(folder))
    assert rag.label.endswith(",greedy,rag=2]") and "pool" in rag.config() and "pool" not in plain.config()
    _, tok = rag.model_and_tokenizer()
    with_ctx, without = rag.prompts(held[:2], tok), plain.prompts(held[:2], tok)
    for a, b in zip(with_ctx, without, strict=True):
        assert a.endswith(b) and a.startswith("Similar items and their prices:") and a.count("\n- ") == 2
    assert all(p.price is not None for p in rag.predict(held[:2]))


def test_api_rag_against_a_real_server(server, pool_and_held, emb_dir, tmp_path, monkeypatch):
    """The course's RAG prompt sent to `appraiser serve`: answers parse, and the context costs prompt tokens."""
    from conftest import KEY

    from appraiser.pricers.api import ApiPricer

    monkeypatch.setenv("TEST_SERVE_KEY", KEY)
    pool, held = pool_and_held
    folder = _index(pool, held, emb_dir).save(tmp_path / "idx")
    plain = ApiPricer(model="smollm2-135m", base_url=server[0], key_env="TEST_SERVE_KEY")
    rag = ApiPricer(model="smollm2-135m", base_url=server[0], key_env="TEST_SERVE_KEY", rag=3, index=str(folder))
    port = server[0].split(":")[-1].split("/")[0]
    assert rag.label == f"api[smollm2-135m,at=127.0.0.1:{port},rag=3]" and rag.config()["rag"] == 3
    a, b = plain.predict(held[:2]), rag.predict(held[:2])
    assert sum(p.price is not None for p in b) >= 1
    assert rag.usage()["prompt_tokens"] > plain.usage()["prompt_tokens"] + 2 * 3 * 10  # three neighbours each
    assert len(a) == len(b) == 2


def test_index_commands_build_and_query(pool_and_held, emb_dir, tmp_path, monkeypatch):
    """`appraiser index build` drops the held-out split; `appraiser index query` shows neighbours and prices."""
    from typer.testing import CliRunner

    from appraiser.cli import app

    pool, held = pool_and_held
    home = tmp_path / "home"
    home.mkdir()
    (home / "embeddings").symlink_to(emb_dir)  # the session's cached vectors
    monkeypatch.setenv("APPRAISER_HOME", str(home))
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    write_items([*pool, held[0]], train)  # a validation item slipped into the pool
    write_items(held, val)
    runner = CliRunner()
    built = runner.invoke(app, ["index", "build", "--train", str(train), "--held-out", str(val)])
    assert built.exit_code == 0, built.output
    assert "1 dropped as held-out" in built.output
    asked = runner.invoke(app, ["index", "query", held[0].text, "-k", "3"])
    assert asked.exit_code == 0, asked.output
    assert asked.output.count("$") >= 3
    missing = runner.invoke(app, ["index", "query", "x", "--index", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "not a retrieval index" in missing.output
    for bad in (["index", "query", "x", "-k", "0"], ["index", "query", "   "], ["index", "build", "--backend", "b"]):
        refused = runner.invoke(app, bad)
        assert refused.exit_code == 2 and "Traceback" not in refused.output, bad


def test_knn_takes_the_options_every_baseline_shares():
    """`appraiser baseline knn` passes --weighting and --seed: the knn factory must accept and check them."""
    from appraiser.pricers import registry

    knn = registry.create("knn", weighting="price_flat", seed=3, k=7)
    assert knn.weighting == "price_flat" and knn.seed == 3 and knn.label == "knn[weighting=price_flat,seed=3,k=7]"
    with pytest.raises(DataError):
        registry.create("knn", weighting="nope")


def test_a_copy_without_a_title_is_still_a_copy(pool_and_held, emb_dir):
    """A probe's leak: a pool copy of a validation item whose source kept no title (3,567 rows of train.jsonl
    have none) had another dedupe key than the original, so `knn -o k=1` priced the original exactly."""
    pool, held = pool_and_held
    assert all(it.title for it in held[:5])
    copies = [it.model_copy(update={"id": f"untitled-{i}", "title": None}) for i, it in enumerate(held[:5])]
    idx = _index([*pool, *copies], (), emb_dir)  # nothing held out at build: the search-time rule alone
    for i, found in enumerate(idx.search(held[:5], k=3)):
        assert f"untitled-{i}" not in {n.id for n in found}
    assert _index([*pool, *copies], held, emb_dir).info["dropped_held_out"] == 5
    # a description that starts the same under another title is another product (validation's Power Stop
    # brake kit K6998-26 and the pool's K131-26 share their first 200 characters): a neighbour, not a copy
    sibling = held[0].model_copy(
        update={"id": "sibling", "title": held[0].title + " (larger size)", "text": held[0].text + " Size: XL."}
    )
    found = _index([*pool, sibling], held, emb_dir).search(held[:1], k=3)[0]
    assert "sibling" in {n.id for n in found}
    # the same without titles (the pool's GE fan motors for two fridges, $85 and $104.85)
    untitled = held[0].model_copy(update={"id": "untitled", "title": None})
    brother = sibling.model_copy(update={"id": "brother", "title": None})
    found = _index([*pool, brother], held, emb_dir).search([untitled], k=3)[0]
    assert "brother" in {n.id for n in found}


def test_a_damaged_index_is_one_clear_error(pool_and_held, emb_dir, tmp_path):
    import shutil

    import numpy as np

    from appraiser.retrieval.index import RetrievalIndex

    pool, held = pool_and_held
    folder = _index(pool, held, emb_dir).save(tmp_path / "idx")

    def cut(name):
        return lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])

    damages = {
        "truncated index.json": ("index.json", cut("index.json")),
        "index.json a list": ("index.json", lambda p: p.write_text("[1]")),
        "index.json without settings": ("index.json", lambda p: p.write_text('{"format": 1}')),
        "truncated items": ("items.jsonl", cut("items.jsonl")),
        "truncated vectors": ("vectors.npy", cut("vectors.npy")),
        "vectors of another model": ("vectors.npy", lambda p: np.save(p, np.zeros((len(pool), 16), np.float32))),
    }
    for what, (name, damage) in damages.items():
        broken = tmp_path / what.replace(" ", "-")
        shutil.copytree(folder, broken)
        damage(broken / name)
        with pytest.raises(DataError, match=r"rebuild it") as e:
            RetrievalIndex.load(broken, cache_dir=emb_dir)
        assert str(broken) in str(e.value), what
