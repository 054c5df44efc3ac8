"""The accuracy levers one at a time, on the first 400 validation items (README, "The accuracy recipe").

    python benchmarks/levers.py weighting [--pricers xgboost,tfidf-ridge]   # source weighting sweep
    python benchmarks/levers.py kernel                                      # llm-kernel variants
    python benchmarks/levers.py layers                                      # Gemma layer by layer (~5 min of reads)
    python benchmarks/levers.py combiners                                   # combiners on one ensemble's OOF
    python benchmarks/levers.py members [--only TEXT]                       # more members and feature views
    python benchmarks/levers.py intervals                                   # plain vs difficulty-scaled conformal
    python benchmarks/levers.py raw-intervals                               # the same for eval's split conformal

Each fits on train.jsonl + extra/ (`--data`), never on validation, and prints MAE on the first `--size`
validation items (and the leave-one-out MAE where the pricer has one). The figures choose settings on
validation, as the data README allows; the recipe's own run (`recipes/benchmark-ensemble.sh`) is the number to
quote. Features and embeddings are cached under `--home`, so a second run reads no model.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

W = "categories=benchmark:off_category_weight=0:sources=benchmark:off_source_weight=0.03"
CURATED = {"sources": "benchmark", "off_source_weight": 0}
RECIPE_MEMBERS = (
    f"xgboost:{W},tfidf-ridge:{W},knn:{W},llm-kernel:sources=benchmark:off_source_weight=0:max_text_tokens=256"
)


def mae(prices: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(prices - truth)))


def weighting(pool, test, y, pricers: list[str]) -> None:
    from appraiser.pricers import registry

    category = {"categories": "benchmark", "off_category_weight": 0}
    settings = [
        {},
        category,
        *({**category, "sources": "benchmark", "off_source_weight": w} for w in (0.3, 0.1, 0.03)),
        CURATED,
    ]
    for name in pricers:
        for s in settings:
            start = time.perf_counter()
            p = registry.create(name, **s).fit(pool)
            got = mae(np.array([q.price for q in p.predict(test)]), y)
            print(f"{name:12s} {s}: MAE ${got:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)


def kernel(pool, test, y) -> None:
    from appraiser.pricers import registry

    variants = [
        CURATED,
        {**CURATED, "max_text_tokens": 256},
        {**CURATED, "gamma_scale": 0.5},
        {**CURATED, "gamma_scale": 2},
        {**CURATED, "gamma_scale": 4},
        {"categories": "benchmark", "off_category_weight": 0, "sources": "benchmark", "off_source_weight": 0.1},
        {**CURATED, "model": "smollm2-135m"},
        # + the 1,992 rows of validation's repository's other test.pkl commit (6 benchmark categories, no Automotive)
        {**CURATED, "max_text_tokens": 256, "sources": ["benchmark", "oscargbocanegra/llms-engineering-main:"]},
    ]
    for s in variants:
        start = time.perf_counter()
        p = registry.create("llm-kernel", progress=True, **s).fit(pool)
        got = mae(np.array([q.price for q in p.predict(test)]), y)
        loo = p.fit_info["loo_mae"]
        print(f"llm-kernel {s}: MAE ${got:.2f}, LOO ${loo:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)


def layers(pool, test, y) -> None:
    """Mean-pooled hidden states of several Gemma layers from one forward pass, each read by RBF kernel ridge
    with its penalty by exact leave-one-out error (the `llm-kernel` math, fitted here per layer)."""
    import torch

    from appraiser.data.prompts import PromptConfig, make_prompt
    from appraiser.data.weighting import BENCHMARK_SOURCES
    from appraiser.inference.decode import encode_prompts, length_batches
    from appraiser.models import load_model

    curated = [it for it in pool if (it.source or "").startswith(BENCHMARK_SOURCES)]
    model, tok = load_model("gemma3-270m")
    model.eval()
    prompts = [make_prompt(it, tok, PromptConfig(max_text_tokens=256)) for it in curated + list(test)]
    chosen = [4, 6, 8, 10, 12, 14, 16, 18]
    feats = {layer: [None] * len(prompts) for layer in chosen}
    with torch.inference_mode():
        for batch in length_batches(tok, prompts, 16):
            ids, mask = encode_prompts(tok, [prompts[i] for i in batch], next(model.parameters()).device)
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            m = mask.unsqueeze(-1).to(hidden[0].dtype)
            for layer in chosen:
                pooled = ((hidden[layer] * m).sum(1) / m.sum(1)).float().numpy()
                for i, row in zip(batch, pooled, strict=True):
                    feats[layer][i] = row
    n = len(curated)
    y_log = np.log([it.price for it in curated])
    for layer in chosen:
        x = np.stack(feats[layer]).astype(np.float64)
        loo, pred = kernel_ridge(x[:n], y_log, x[n:])
        print(f"layer {layer:2d}: MAE ${mae(np.exp(pred), y):.2f}, LOO ${loo:.2f}", flush=True)
    # several layers side by side (each standardised, so each counts alike), and another kernel on the last one
    for group in ([16, 18], [14, 16, 18], [12, 14, 16, 18]):
        x = np.concatenate([np.stack(feats[layer]).astype(np.float64) for layer in group], axis=1)
        loo, pred = kernel_ridge(x[:n], y_log, x[n:])
        print(f"layers {'+'.join(map(str, group))}: MAE ${mae(np.exp(pred), y):.2f}, LOO ${loo:.2f}", flush=True)
    x = np.stack(feats[18]).astype(np.float64)
    loo, pred = kernel_ridge(x[:n], y_log, x[n:], kind="laplacian")
    print(f"layer 18, Laplacian kernel: MAE ${mae(np.exp(pred), y):.2f}, LOO ${loo:.2f}", flush=True)


def kernel_ridge(
    x: np.ndarray, y: np.ndarray, x_test: np.ndarray, power: float = 0.0, kind: str = "rbf"
) -> tuple[float, np.ndarray]:
    """RBF (or Laplacian) kernel ridge on standardised features, the penalty with the lowest exact leave-one-out
    dollar MAE; it regresses on log price (`power` 0) or on price**power, and returns log prices either way."""
    mu, sd = x.mean(0), x.std(0)
    sd[sd < 1e-8] = 1.0
    x, x_test = (x - mu) / sd, (x_test - mu) / sd
    gamma = 1.0 / x.shape[1]

    def k(a, b):
        if kind == "laplacian":  # exp(-gamma * L1 distance): heavier tails than the RBF's squared distance
            from sklearn.metrics.pairwise import manhattan_distances

            return np.exp(-gamma * manhattan_distances(a, b))
        return np.exp(-gamma * np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0))

    def to_log(t):  # back from the target, clipped to the data's price range
        t = np.log(np.clip(t, 1e-3, None)) / power if power else t
        return np.clip(t, np.log(0.5), np.log(1000.0))

    t = np.exp(power * y) if power else y
    bias = t.mean()
    eigval, eigvec = np.linalg.eigh(k(x, x))
    qy, q2 = eigvec.T @ (t - bias), eigvec**2
    best = None
    for a in np.logspace(-2, 2, 9):
        inv = 1 / (eigval + a)
        dual = eigvec @ (qy * inv)
        loo = float(np.mean(np.abs(np.exp(to_log(t - dual / (q2 @ inv))) - np.exp(y))))
        if best is None or loo < best[0]:
            best = (loo, dual)
    return best[0], to_log(k(x_test, x) @ best[1] + bias)


def fitted_ensemble(pool, test, members: str, folds: int):
    from appraiser.pricers.ensemble import EnsemblePricer

    ens = EnsemblePricer(members, folds=folds, **CURATED).fit(pool)
    keep = ~np.isnan(ens.oof_).any(axis=1)  # the curated rows: the only ones priced out of fold
    return ens, ens.oof_[keep], np.log([it.price for it, k in zip(pool, keep, strict=True) if k]), keep


def combiners(pool, test, y, members: str, folds: int) -> None:
    from scipy.optimize import minimize
    from sklearn.linear_model import LinearRegression

    from appraiser.pricers.ensemble import nnls_with_intercept

    ens, x, y_log, keep = fitted_ensemble(pool, test, members, folds)
    xt = ens.member_log_prices(test)
    c, b = nnls_with_intercept(x, y_log, np.ones(len(x)))
    print(f"NNLS in log space: MAE ${mae(np.exp(xt @ c + b), y):.2f} (weights {np.round(c, 3)}, intercept {b:.3f})")

    prices = np.exp(y_log)

    def l1_dollars(theta):  # a smooth |e| (sqrt(e² + 1)) so L-BFGS-B can follow it; weights kept >= 0
        z = x @ theta[:-1] + theta[-1]
        e = np.exp(z) - prices
        s = np.sqrt(e * e + 1.0)
        g = e / s * np.exp(z)
        return s.mean(), np.append(x.T @ g, g.sum()) / len(x)

    bounds = [(0, None)] * x.shape[1] + [(None, None)]
    r = minimize(l1_dollars, np.append(c, b), jac=True, method="L-BFGS-B", bounds=bounds)
    print(f"L1 in dollars: MAE ${mae(np.exp(xt @ r.x[:-1] + r.x[-1]), y):.2f}")
    lr = LinearRegression().fit(x, y_log)
    print(f"linear regression: MAE ${mae(np.exp(lr.predict(xt)), y):.2f}")

    import xgboost as xgb

    cats = sorted({it.category or "none" for it in pool})

    def meta(items):
        one_hot = np.array([[(it.category or "none") == c for c in cats] for it in items], float)
        return np.hstack([one_hot, np.log1p([len(it.text) for it in items])[:, None]])

    m_train = meta([it for it, k in zip(pool, keep, strict=True) if k])
    for depth in (2, 3):
        g = xgb.XGBRegressor(n_estimators=300, learning_rate=0.03, max_depth=depth, subsample=0.8)
        g.fit(np.hstack([x, m_train]), y_log)
        got = mae(np.exp(g.predict(np.hstack([xt, meta(test)]))), y)
        print(f"XGBoost stacking, depth {depth}, + category and length: MAE ${got:.2f}")


def more_members(pool, test, y, members: str, folds: int, only: str | None = None) -> None:
    """Candidate members and feature views on the recipe's out-of-fold rows: each fitted fold by fold on the
    curated rows (the ensemble's own folds), alone and stacked with the recipe's members (the combiner itself
    cross-fitted over the same folds, so "stacked OOF" is honest), then on validation. Features come from the
    caches the recipe filled; Gemma's last-token features (`pooling=both`) are read once (~5 minutes)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from appraiser.pricers import registry
    from appraiser.pricers.baselines import EmbeddingCache
    from appraiser.pricers.ensemble import nnls_with_intercept

    ens, x, y_log, keep = fitted_ensemble(pool, test, members, folds)
    items = [it for it, k in zip(pool, keep, strict=True) if k]
    xt, prices = ens.member_log_prices(test), np.exp(y_log)
    pool_fold = np.empty(len(pool), dtype=int)  # the ensemble's folds over the whole pool
    for i, (_, te) in enumerate(KFold(folds, shuffle=True, random_state=0).split(np.arange(len(pool)))):
        pool_fold[te] = i
    fold = pool_fold[keep]

    def oof(fit_predict, f, ft):
        out = np.empty(len(f))
        for k in range(folds):
            tr = fold != k
            out[~tr] = fit_predict(f[tr], y_log[tr], f[~tr])
        return out, fit_predict(f, y_log, ft)

    def stacked(cols, cols_t):
        a, at = np.column_stack([x, *cols]), np.column_stack([xt, *cols_t])
        z = np.empty(len(a))
        for k in range(folds):
            tr = fold != k
            c, b = nnls_with_intercept(a[tr], y_log[tr], np.ones(tr.sum()))
            z[~tr] = a[~tr] @ c + b
        c, b = nnls_with_intercept(a, y_log, np.ones(len(a)))
        return mae(np.exp(z), prices), mae(np.exp(at @ c + b), y), c

    base_oof, base_val, _ = stacked([], [])
    print(f"recipe ensemble: stacked OOF ${base_oof:.2f}, validation ${base_val:.2f}", flush=True)
    cache = EmbeddingCache()

    def gemma(pooling: str = "mean"):
        extra = {"pooling": pooling, "progress": True} if pooling != "mean" else {}
        model = registry.create("llm-kernel", max_text_tokens=256, **extra)
        return model.features(items), model.features(test)

    def minilm():
        return cache.embed([it.text for it in items]).astype(float), cache.embed([it.text for it in test]).astype(float)

    def gemma_minilm(scale: bool):
        (g, gt), (m, mt) = gemma(), minilm()
        s = np.sqrt(g.shape[1] / m.shape[1]) if scale else 1.0  # MiniLM's 384 unit-length dims weighed like Gemma's 640
        return np.hstack([g, m * s]), np.hstack([gt, mt * s])

    def kr(power=0.0):
        return lambda f, yy, ft: kernel_ridge(f, yy, ft, power)[1]

    def sk(make):
        return lambda f, yy, ft: make().fit(f, yy).predict(ft)

    import xgboost as xgb

    def boosted():
        return xgb.XGBRegressor(n_estimators=600, learning_rate=0.03, max_depth=4, subsample=0.8, colsample_bytree=0.3)

    def ridge():
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(1, 5, 9)))

    def pool_member(name: str, **options):
        """A registry pricer fitted like the recipe's members: on the whole pool minus each fold (its own
        weighting), pricing the fold's curated rows; for validation, on the whole pool."""
        from appraiser.evaluation.evaluator import fit_pricer

        def run():
            out = np.full(len(pool), np.nan)
            for k in range(folds):
                held = np.where((pool_fold == k) & keep)[0]
                p = registry.create(name, **options)
                fit_pricer(p, [pool[i] for i in np.where(pool_fold != k)[0]])
                out[held] = np.log([q.price for q in p.predict([pool[i] for i in held])])
            p = registry.create(name, **options)
            fit_pricer(p, pool)
            return out[keep], np.log([q.price for q in p.predict(test)])

        return run

    recipe_weighting = dict(pair.split("=") for pair in W.split(":"))
    candidates = [  # (name, fit_predict on features, features) or (name, None, a run giving OOF and validation)
        ("kernel ridge on MiniLM embeddings", kr(), minilm),
        ("kernel ridge on Gemma + MiniLM", kr(), lambda: gemma_minilm(True)),
        ("kernel ridge on Gemma last-token + mean features", kr(), lambda: gemma("both")),
        ("kernel ridge on Gemma features, target price^0.3", kr(0.3), gemma),
        ("kernel ridge on Gemma features, target price^0.5", kr(0.5), gemma),
        ("XGBoost on Gemma + MiniLM features", sk(boosted), lambda: gemma_minilm(False)),
        ("linear ridge on Gemma features", sk(ridge), gemma),
        ("TF-IDF ridge with character 3-5-grams too", None, pool_member("tfidf-ridge", chars=True, **recipe_weighting)),
    ]
    for name, fit_predict, make in candidates:
        if only and only.lower() not in name.lower():
            continue
        o, t = make() if fit_predict is None else oof(fit_predict, *make())
        got_oof, got_val, c = stacked([o], [t])
        print(
            f"{name}: alone OOF ${mae(np.exp(o), prices):.2f}, validation ${mae(np.exp(t), y):.2f}; added to the "
            f"recipe: stacked OOF ${got_oof:.2f} ({got_oof - base_oof:+.2f}), validation ${got_val:.2f} "
            f"({got_val - base_val:+.2f}), its weight {c[-1]:.3f}",
            flush=True,
        )


def intervals(pool, test, y, members: str, folds: int, whole) -> None:
    """One width in log space for every item vs widths scaled by a difficulty model (the ensemble's default),
    for the ensemble and each member: coverage overall and in each third of the guesses (cut where the curated
    rows' out-of-fold guesses cut), out of fold (cross-fitted σ) and on validation, and the mean width; then how
    hard validation's first 400 items are next to its other items and to the curated rows (`whole`: all of
    validation), as the errors say and as the difficulty model expects."""
    from appraiser.data.weighting import BENCHMARK_SOURCES
    from appraiser.pricers.conformal import cross_fitted_difficulty, weighted_quantile

    ens, x, y_log, keep = fitted_ensemble(pool, test, members, folds)
    items = [it for it, k in zip(pool, keep, strict=True) if k]
    xt, yt = ens.member_log_prices(test), np.log(y)
    names = [m.split(":")[0] for m in members.split(",")] + ["ensemble"]
    z_all = np.column_stack([x, x @ ens.coef_ + ens.intercept_])
    zt_all = np.column_stack([xt, xt @ ens.coef_ + ens.intercept_])
    ones = np.ones(len(x))

    def cover(inside, thirds):
        return f"{inside.mean():.1%} [{' '.join(f'{inside[thirds == i].mean():.0%}' for i in range(3))}]"

    print("coverage of the nominal 80% interval: all [cheapest third of guesses, middle, dearest]; mean width")
    for j, name in enumerate(names):
        z, zt = z_all[:, j], zt_all[:, j]
        spread, spread_t = (x.std(1), xt.std(1)) if name == "ensemble" else (None, None)
        r, rt = np.abs(y_log - z), np.abs(yt - zt)
        edges = np.quantile(z, [1 / 3, 2 / 3])
        b, bt = np.digitize(z, edges), np.digitize(zt, edges)
        q = weighted_quantile(r, ones, 0.8)
        half_t = np.full(len(zt), q)
        row = [f"{name:12s} plain      OOF {cover(r <= q, b)}  validation {cover(rt <= q, bt)}"]
        sigma = cross_fitted_difficulty(items, z, r, ones, spread)
        qn = weighted_quantile(r / sigma, ones, 0.8)
        if name == "ensemble":
            half_n = ens.q_ * ens.scale_.predict(test, zt, spread_t)
        else:
            half_n = ens.member_q_[j] * ens.member_scale_[j].predict(test, zt)
        row.append(f"{'':12s} difficulty OOF {cover(r <= qn * sigma, b)}  validation {cover(rt <= half_n, bt)}")
        for line, half in enumerate((half_t, half_n)):
            row[line] += f"  width ${np.mean(np.exp(zt) * (np.exp(half) - np.exp(-half))):,.0f}"
        print("\n".join(row), flush=True)
    same_file = np.array([(it.source or "").startswith(BENCHMARK_SOURCES[0]) for it in pool])
    rows = same_file[keep]
    z = z_all[:, -1]
    print(
        f"ensemble MAE: out of fold on the {rows.sum()} rows from validation's own file "
        f"${mae(np.exp(z[rows]), np.exp(y_log[rows])):.2f}, validation ${mae(np.exp(zt_all[:, -1]), y):.2f}"
    )
    xa = ens.member_log_prices(whole)
    za = xa @ ens.coef_ + ens.intercept_
    r, ra = np.abs(y_log - z), np.abs(np.log([it.price for it in whole]) - za)
    sigma, sigma_a = cross_fitted_difficulty(items, z, r, ones, x.std(1)), ens.scale_.predict(whole, za, xa.std(1))
    print(
        f"ensemble mean |log error| (its difficulty model's expectation): out of fold {r.mean():.3f} "
        f"({sigma.mean():.3f}), same-file rows {r[rows].mean():.3f} ({sigma[rows].mean():.3f}), validation's "
        f"first 400 {ra[:400].mean():.3f} ({sigma_a[:400].mean():.3f}), its other {len(whole) - 400} "
        f"{ra[400:].mean():.3f} ({sigma_a[400:].mean():.3f})"
    )
    # Could they be easier because the pool holds closer neighbours of them? Their nearest pool item (MiniLM
    # cosine, the item itself and copies of it excluded) says no.
    from appraiser.retrieval.index import copy_keys, embed_items

    vectors, keys = embed_items(pool), [copy_keys(it) for it in pool]
    pool_log = np.log([it.price for it in pool])

    def nearest(queries, own=None, k=10):
        """Each query's nearest pool item's similarity, and the spread (sd) of its k nearest items' log prices."""
        sims = embed_items(queries) @ vectors.T
        for i, it in enumerate(queries):
            mine = copy_keys(it)  # the index's own rule for copies
            sims[i, [j for j, k in enumerate(keys) if k & mine]] = -1
            if own is not None:
                sims[i, own[i]] = -1
        top = np.argsort(-sims, axis=1)[:, :k]
        return sims.max(axis=1), pool_log[top].std(axis=1)

    (near, spread_nb), (near_a, spread_nb_a) = nearest(items, np.where(keep)[0]), nearest(whole)
    print(
        f"nearest pool item's cosine similarity: out of fold {near.mean():.3f}, validation's first 400 "
        f"{near_a[:400].mean():.3f}, its other {len(whole) - 400} {near_a[400:].mean():.3f}; mean |log error| by "
        "quarter of that similarity (out of fold → first 400): "
        + ", ".join(f"{r[q].mean():.3f} → {ra[:400][qa].mean():.3f}" for q, qa in _quarters(near, near_a[:400]))
    )
    # One more input for the ensemble's difficulty model: how much the prices of its 10 nearest pool items
    # disagree. Chosen by its out-of-fold fit (|error − σ|), then read on validation.
    from appraiser.pricers.conformal import Difficulty

    for label, extra, extra_a in (
        ("members' spread", None, None),
        ("+ neighbours' price spread", spread_nb, spread_nb_a),
    ):
        s_oof = x.std(1) if extra is None else np.column_stack([x.std(1), extra])
        s_all = xa.std(1) if extra is None else np.column_stack([xa.std(1), extra_a])
        sig = cross_fitted_difficulty(items, z, r, ones, s_oof)
        q = weighted_quantile(r / sig, ones, 0.8)
        sig_a = Difficulty().fit(items, z, r, ones, s_oof).predict(whole, za, s_all)
        inside = ra <= q * sig_a
        width = np.mean(np.exp(za[:400]) * (np.exp(q * sig_a[:400]) - np.exp(-q * sig_a[:400])))
        print(
            f"difficulty model with {label}: out-of-fold |error − σ| {np.mean(np.abs(r - sig)):.4f}, corr(σ, error) "
            f"{np.corrcoef(sig, r)[0, 1]:.3f}; covers {np.mean(r <= q * sig):.1%} out of fold, "
            f"{inside[:400].mean():.1%} of validation's first 400 (σ expected {sig_a[:400].mean():.3f}, error "
            f"{ra[:400].mean():.3f}), {inside[400:].mean():.1%} of the other {len(whole) - 400}; width ${width:,.0f}"
        )


def _quarters(ref: np.ndarray, other: np.ndarray):
    """(mask of ref, mask of other) for each quarter of `ref`'s values, lowest first."""
    edges = np.quantile(ref, [0.25, 0.5, 0.75])
    a, b = np.digitize(ref, edges), np.digitize(other, edges)
    return [(a == i, b == i) for i in range(4)]


def raw_intervals(data: Path) -> None:
    """Plain vs difficulty-scaled split conformal where `appraiser eval --interval` uses it: tfidf-ridge on the
    raw pool (2,400 of the first 3,000 `train.jsonl` items, 480 of them for calibration), scored on the other
    600 — why `eval` and `baseline` keep `--interval-scale none` as their default."""
    from appraiser.data.io import read_items
    from appraiser.pricers import registry
    from appraiser.pricers.conformal import Conformal

    items = read_items(data / "train.jsonl", limit=3000)
    order = np.random.default_rng(1).permutation(len(items))
    train, test = [items[i] for i in order[:2400]], [items[i] for i in order[2400:]]
    truth = np.array([it.price for it in test])
    for scale in ("none", "difficulty"):
        preds = Conformal(registry.create("tfidf-ridge"), level=0.8, seed=0, scale=scale).fit(train).predict(test)
        inside = np.array([p.low <= t <= p.high for p, t in zip(preds, truth, strict=True)])
        thirds = np.array_split(inside[np.argsort([p.price for p in preds], kind="stable")], 3)
        width = np.mean([p.high - p.low for p in preds])
        by_third = " ".join(f"{t.mean():.0%}" for t in thirds)
        print(f"{scale:10s} covers {inside.mean():.1%} [{by_third}], width ${width:,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    levers = ("weighting", "kernel", "layers", "combiners", "members", "intervals", "raw-intervals")
    ap.add_argument("lever", choices=levers)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("APPRAISER_DATA", "../shared/data")))
    ap.add_argument("--home", type=Path, default=Path(".appraiser"))
    ap.add_argument("--size", type=int, default=400)
    ap.add_argument("--pricers", default="xgboost,tfidf-ridge")
    ap.add_argument("--members", default=RECIPE_MEMBERS)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--only", help="members: only the candidates whose name contains this text")
    args = ap.parse_args()
    os.environ["APPRAISER_HOME"] = str(args.home.resolve())

    from appraiser.data.io import read_pool
    from appraiser.evaluation.evaluator import load_test_items

    if args.lever == "raw-intervals":
        raw_intervals(args.data)
        return
    pool = read_pool([args.data])
    test = load_test_items(args.data / "validation.jsonl", args.size)
    y = np.array([it.price for it in test])
    if args.lever == "weighting":
        weighting(pool, test, y, [p.strip() for p in args.pricers.split(",")])
    elif args.lever == "kernel":
        kernel(pool, test, y)
    elif args.lever == "layers":
        layers(pool, test, y)
    elif args.lever == "members":
        more_members(pool, test, y, args.members, args.folds, args.only)
    elif args.lever == "combiners":
        combiners(pool, test, y, args.members, args.folds)
    else:
        intervals(pool, test, y, args.members, args.folds, load_test_items(args.data / "validation.jsonl", None))


if __name__ == "__main__":
    main()
