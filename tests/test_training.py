"""Fine-tuning on the real data with the real embedded model: labels, audit, loss, sampler, runs, CLI."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.data.io import read_items
from appraiser.data.prompts import PromptConfig, make_completion
from appraiser.pricers.base import parse_price_text
from appraiser.runs.store import RunStore
from appraiser.training import TrainConfig, audit, encode, start
from appraiser.training.dataset import (
    IGNORE_INDEX,
    Collator,
    LabelAuditError,
    LengthGroupedSampler,
    choose_items,
    encode_items,
    token_view,
)

runner = CliRunner()
PROMPT = PromptConfig(max_text_tokens=40)


@pytest.fixture(scope="module")
def tokenizer():
    from appraiser.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def train_items(data_dir):
    return read_items(data_dir / "train.jsonl", limit=300)


@pytest.fixture(scope="module")
def validation_items(data_dir):
    return read_items(data_dir / "validation.jsonl")


@pytest.fixture()
def tiny_files(small_split):
    return small_split(16, 4)


# ------------------------------------------------------------------------------------------ labels


def test_labels_cover_exactly_price_and_eos_even_when_pad_is_eos(tokenizer, train_items):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2: the trap this guards against
    examples = [encode(it, tokenizer, PROMPT) for it in train_items[:20]]
    for it, ex in zip(train_items, examples, strict=False):
        trained = [t for t in ex.labels if t != IGNORE_INDEX]
        assert trained[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(trained[:-1]) == make_completion(it.price, PROMPT)
        assert ex.labels[: ex.prompt_len] == [IGNORE_INDEX] * ex.prompt_len
        assert tokenizer.decode(ex.input_ids[: ex.prompt_len]).endswith("Price is $")
    batch = Collator(tokenizer.pad_token_id)(examples[:8])
    width = batch["input_ids"].shape[1]
    assert width == max(len(ex) for ex in examples[:8])  # padded to the batch's longest, not a fixed size
    for row, ex in enumerate(examples[:8]):
        labels = batch["labels"][row]
        assert int((labels != IGNORE_INDEX).sum()) == len(ex) - ex.prompt_len
        assert int(labels[len(ex) - 1]) == tokenizer.eos_token_id  # the EOS is trained, padding is not
        assert bool((labels[len(ex) :] == IGNORE_INDEX).all())
        assert int(batch["attention_mask"][row].sum()) == len(ex)


def test_audit_passes_real_data_and_summarizes(tokenizer, train_items):
    examples = encode_items(train_items[:200], tokenizer, PROMPT)
    report = audit(train_items[:200], examples, tokenizer, PROMPT)
    assert report.ok, report.problems[:3]
    report.raise_if_failed()
    assert report.n == 200
    assert min(report.completion_tokens) >= 5  # "1.00" + EOS at least
    assert "200 examples, 200 ok" in report.summary()


def test_audit_refuses_a_collator_that_masks_eos_and_trains_the_prompt(tokenizer, train_items):
    from transformers import DataCollatorForLanguageModeling

    naive = DataCollatorForLanguageModeling(tokenizer, mlm=False)  # labels = inputs, pad masked

    def collate(features):
        return naive([{"input_ids": f["input_ids"]} for f in features])

    items = train_items[:6]
    examples = encode_items(items, tokenizer, PROMPT)
    report = audit(items, examples, tokenizer, PROMPT, collator=collate)
    assert not report.ok
    assert report.bad_examples == 6
    assert any("masks the EOS" in p.reason for p in report.problems)
    with pytest.raises(LabelAuditError, match="label audit failed for 6 of 6 examples"):
        report.raise_if_failed()


def test_audit_catches_masked_eos_wrong_labels_and_truncation(tokenizer, train_items):
    items = train_items[:4]
    examples = encode_items(items, tokenizer, PROMPT)
    examples[0].labels[-1] = IGNORE_INDEX  # EOS masked
    examples[1].labels[examples[1].prompt_len - 1] = examples[1].input_ids[examples[1].prompt_len - 1]  # prompt
    examples[2].completion = "9999.00"  # label text from another price
    longest = max(len(ex) for ex in examples)
    report = audit(items, examples, tokenizer, PROMPT, max_length=longest - 1)
    reasons = {p.index: " ".join(q.reason for q in report.problems if q.index == p.index) for p in report.problems}
    assert "EOS is not trained" in reasons[0]
    assert "not exactly the completion" in reasons[1]
    assert "does not match the price" in reasons[2]
    assert any("truncation would cut the completion" in r for r in reasons.values())
    with pytest.raises(LabelAuditError) as err:
        report.raise_if_failed()
    assert items[0].id in str(err.value)


def test_token_view_marks_trained_tokens(tokenizer, train_items):
    ex = encode(train_items[0], tokenizer, PROMPT)
    view = token_view(ex, tokenizer)
    trained = "".join(view.plain[s.start : s.end] for s in view.spans if "green" in str(s.style))
    assert trained.replace("│", "").startswith(make_completion(train_items[0].price, PROMPT))
    assert tokenizer.eos_token in trained


# ------------------------------------------------------------------------------------------ sampling


def test_length_grouped_sampler_is_seeded_per_epoch_and_groups_lengths():
    lengths = [(i * 37) % 101 + 10 for i in range(203)]
    s = LengthGroupedSampler(lengths, batch_size=8, seed=3, mega=5)
    first = list(s)
    assert sorted(first) == list(range(203))  # every example once
    assert list(LengthGroupedSampler(lengths, 8, 3, mega=5)) == first  # same seed, same order
    s.set_epoch(1)
    second = list(s)
    assert second != first and sorted(second) == list(range(203))
    s.set_epoch(0)
    assert list(s) == first
    batches = s.batches()
    assert [len(b) for b in batches][-1] == 203 % 8 and all(len(b) == 8 for b in batches[:-1])

    def padding(order):
        return sum(max(lengths[i] for i in order[k : k + 8]) * len(order[k : k + 8]) for k in range(0, 203, 8))

    shuffled = list(LengthGroupedSampler(lengths, 8, 3, group=False))
    assert padding(first) < 0.8 * padding(shuffled)


def test_weighting_draws_a_seeded_sample_shaped_like_validation(data_dir, validation_items):
    pool = read_items(data_dir / "train.jsonl", limit=3000)
    plain = choose_items(pool, 500, "none", seed=1)
    matched = choose_items(pool, 500, "match", seed=1, reference=validation_items)
    flat = choose_items(pool, 500, "price_flat", seed=1)
    assert [it.id for it in matched] == [it.id for it in choose_items(pool, 500, "match", 1, validation_items)]
    assert [it.id for it in matched] != [it.id for it in choose_items(pool, 500, "match", 2, validation_items)]
    assert len({it.id for it in matched}) == 500  # without replacement
    median = {k: statistics.median(it.price for it in v) for k, v in (("plain", plain), ("matched", matched))}
    val_median = statistics.median(it.price for it in validation_items)
    assert abs(median["matched"] - val_median) < 0.5 * abs(median["plain"] - val_median)
    assert statistics.median(it.price for it in flat) > median["plain"]
    assert choose_items(pool, None) == pool
    with pytest.raises(ValueError, match="weighting"):
        choose_items(pool, 10, "bogus")


def test_a_fine_tune_can_draw_only_the_rows_curated_like_the_benchmark(data_dir):
    """`--sources benchmark --off-source-weight 0`: the draw holds only the benchmark's own curation, and the
    conformal replay of the run's draw (which items it trained on) reads the same two fields."""
    from appraiser.data.weighting import BENCHMARK_SOURCES
    from appraiser.training.config import TrainConfig

    pool = read_items(data_dir / "train.jsonl", limit=3000)
    drawn = choose_items(pool, None, "none", 1, None, 1.0, ["benchmark"], 0.0)
    curated = [it for it in pool if (it.source or "").startswith(BENCHMARK_SOURCES)]
    assert drawn == curated and 0 < len(curated) < len(pool)
    cfg = TrainConfig(train=data_dir / "train.jsonl", sources=["benchmark"], off_source_weight=0.0)
    assert TrainConfig.model_validate_json(cfg.model_dump_json()).sources == ["benchmark"]
    with pytest.raises(ValueError, match="off_source_weight needs sources"):
        TrainConfig(off_source_weight=0.5)


# ------------------------------------------------------------------------------------------ loss


def test_completion_loss_equals_the_models_own_loss_and_trains_lora(tokenizer, train_items, one_thread):
    from appraiser.training.trainer import build_model, completion_loss

    model, tok = build_model(TrainConfig(model="smollm2-135m"))
    examples = encode_items(train_items[:3], tok, PROMPT)
    batch = Collator(tok.pad_token_id)(examples)
    model.train()
    ours = completion_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    with torch.no_grad():
        full = model(**batch).loss  # transformers' loss over full logits, same labels
    assert float(ours.detach()) == pytest.approx(float(full), abs=1e-4)
    ours.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any(float(p.grad.abs().sum()) > 0 for n, p in trainable.items() if "lora_B" in n)


# ------------------------------------------------------------------------------------------ runs


def test_training_run_logs_probes_and_saves_loadable_adapters(tiny_files):
    from appraiser.inference.decode import predict_prices
    from appraiser.models import load_finetuned

    train, validation = tiny_files
    cfg = TrainConfig(
        train=train,
        validation=validation,
        n_train=8,
        max_steps=3,
        batch_size=2,
        max_text_tokens=12,
        probe_every=2,  # at step 2, and at the end (step 3)
        probe_size=2,
        probe_method="greedy",
        save_every=1,
        keep_checkpoints=1,
        name="tiny",
        threads=1,
    )
    seen = []
    result = start(cfg, listeners=[lambda step, total, values: seen.append((step, total, set(values)))])
    store = RunStore()
    run = store.get("tiny")
    assert run.id == result.run_id and run.status == "succeeded" and run.step == 3 and run.max_steps == 3
    steps, losses = store.series(run.id, "loss")
    assert steps == [1, 2, 3] and all(0 < v < 20 for v in losses)
    latest = store.latest(run.id)
    assert {"lr", "grad_norm", "tokens_per_s", "eta_s", "probe_mae", "probe_hit_rate", "eval_loss"} <= set(latest)
    assert latest["tokens_per_s"] > 0 and latest["eta_s"] == 0
    assert store.series(run.id, "probe_mae")[0] == [2, 3]
    assert (2, 3, {"probe_mae", "probe_hit_rate", "probe_failures", "eval_loss"}) in seen
    messages = [e.message for e in store.events(run.id)]
    assert "Step 3/3: training loss=" in " ".join(messages)
    assert any(m.startswith("Probe at step 2: MAE $") for m in messages)
    assert run.best_metric == "probe_mae" and run.best_step in (2, 3)
    assert result.best_probe_mae == pytest.approx(run.best_value)

    folder = run.folder
    checkpoints = sorted(p.name for p in folder.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-3"]  # rotation kept one checkpoint ...
    best = json.loads((folder / "best" / "metrics.json").read_text())
    assert best["step"] == run.best_step  # ... and best/ apart from it
    for sub in ("best", "final"):
        info = json.loads((folder / sub / "appraiser.json").read_text())
        assert info["base_model"] == "smollm2-135m"
        assert info["prompt"]["max_text_tokens"] == 12
        assert (folder / sub / "adapter_config.json").exists()
    saved = TrainConfig.load(folder / "config.json")
    assert saved.train == train.resolve() and saved.max_steps == 3

    model, tok = load_finetuned(folder / "final")
    dists = predict_prices(
        model, tok, ["What does this cost to the nearest dollar?\n\nA pen\n\nPrice is $"], method="greedy"
    )
    (dist,) = dists
    assert dist is not None, "the fine-tune wrote no price"
    assert dist.greedy == dist.mean == parse_price_text(dist.raw) > 0


def test_early_stopping_when_the_probe_stops_improving(tiny_files):
    train, validation = tiny_files
    cfg = TrainConfig(
        train=train,
        validation=validation,
        n_train=8,
        max_steps=6,
        batch_size=2,
        max_text_tokens=8,
        learning_rate=1e-12,  # the model does not move, so the probe MAE cannot improve
        probe_every=1,
        probe_size=1,
        probe_method="greedy",
        patience=1,
        save_every=10,
        threads=1,
    )
    result = start(cfg)
    assert result.stopped_early
    assert result.steps == 2
    store = RunStore()
    assert store.series(result.run_id, "probe_mae")[0] == [1, 2]
    assert any(e.message.startswith("Early stopping at step 2") for e in store.events(result.run_id))
    assert (result.folder / "final" / "adapter_config.json").exists()


# ------------------------------------------------------------------------------------------ CLI


def test_cli_dry_run_shows_labels_and_audit(tiny_files):
    train, validation = tiny_files
    out = runner.invoke(
        app, ["train", "--dry-run", "--train", str(train), "--validation", str(validation), "--n-train", "8"]
    )
    assert out.exit_code == 0, out.output
    assert "label audit: 8 examples, 8 ok, 0 with problems" in out.output
    assert "Price│ is│" in out.output and "<|im_end|>" in out.output  # tokens, split by │
    assert RunStore().list() == []  # a dry run creates no run


def test_cli_train_rejects_bad_input_with_one_line(tiny_files, tmp_path):
    train, validation = tiny_files
    bad = runner.invoke(app, ["train", "--train", str(train), "--weighting", "bogus", "--dry-run"])
    assert bad.exit_code == 2
    assert "invalid training option weighting" in bad.output
    missing = runner.invoke(app, ["train", "--train", str(tmp_path / "nope.jsonl"), "--dry-run", "--probe-every", "0"])
    assert missing.exit_code == 2
    assert "no such file" in missing.output
    unknown = runner.invoke(app, ["train", "--resume", "no-such-run"])
    assert unknown.exit_code == 2 and "no run 'no-such-run'" in unknown.output
    for name in ("last", "a/b", "two\nlines"):  # names typed back later (--resume NAME, --model NAME/final)
        named = runner.invoke(app, ["train", "--train", str(train), "--name", name, "--dry-run"])
        assert named.exit_code == 2 and "cannot be used" in named.output, named.output
    ignored = runner.invoke(app, ["train", "--resume", "any", "--model", "gemma3-270m", "--max-steps", "20"])
    assert ignored.exit_code == 2 and "drop --model, --max-steps" in ignored.output  # never silently ignored


def test_a_failed_audit_refuses_to_start_and_creates_no_run(tiny_files):
    train, validation = tiny_files
    cfg = TrainConfig(train=train, validation=validation, n_train=4, max_length=20, probe_every=0)
    with pytest.raises(LabelAuditError, match="truncation would cut the completion away"):
        start(cfg)
    assert RunStore().list() == []


def test_resume_uses_only_complete_checkpoints_and_refuses_finished_runs(tmp_path):
    from appraiser.training.trainer import checkpoints

    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert [s for s, _ in checkpoints(tmp_path)] == [2, 4]  # checkpoint-6 was cut short by a kill

    store = RunStore()
    done = store.create(name="finished", status="succeeded")
    out = runner.invoke(app, ["train", "--resume", "finished"])
    assert out.exit_code == 2 and f"run {done.id} already finished" in out.output


def test_probe_state_is_restored_from_the_store_at_the_resume_step():
    from appraiser.training.trainer import ProbeCallback

    store = RunStore()
    run = store.create(name="probed")
    for step, mae in ((2, 150.0), (4, 120.0), (6, 130.0), (8, 110.0)):
        store.log_metrics(run.id, step, {"probe_mae": mae})
    probe = ProbeCallback(TrainConfig(patience=2), [], [], None, store, run, {})
    probe.restore(6)  # resuming from checkpoint-6: the probe at step 8 is in the future again
    assert (probe.best, probe.best_step, probe.since_best, probe.last_step) == (120.0, 4, 1, 6)
    assert not probe.patience_spent
    store.log_metrics(run.id, 7, {"probe_mae": float("nan")})  # a probe that priced nothing: no improvement
    probe = ProbeCallback(TrainConfig(patience=2), [], [], None, store, run, {})
    probe.restore(7)  # the review: NaN probes were skipped here, while the live run counted them
    assert (probe.best, probe.since_best, probe.last_step) == (120.0, 2, 7) and probe.patience_spent
    failed = store.create(name="never-priced")
    for step in (2, 4):
        store.log_metrics(failed.id, step, {"probe_mae": float("nan")})
    probe = ProbeCallback(TrainConfig(patience=2), [], [], None, store, failed, {})
    probe.restore(4)
    assert probe.best is None and probe.since_best == 2 and probe.patience_spent


def test_probe_items_come_from_the_end_of_validation(tokenizer, tiny_files):
    """The eval test set is the START of a split file; the probe that picks checkpoints must not overlap it."""
    from appraiser.training.trainer import prepare_data, resolve_paths

    train, validation = tiny_files
    cfg = resolve_paths(TrainConfig(train=train, validation=validation, n_train=4, probe_every=1, probe_size=2))
    data = prepare_data(cfg, tokenizer)
    ids = [it.id for it in read_items(validation)]
    assert [it.id for it in data.probe_items] == ids[-2:]
    assert not {it.id for it in data.probe_items} & set(ids[:2])
