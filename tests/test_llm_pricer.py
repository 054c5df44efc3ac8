"""The `llm` pricer and `appraiser predict` on the real SmolLM2 (zero-shot and with a LoRA run folder)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.data.io import read_items
from appraiser.evaluation.evaluator import evaluate
from appraiser.models import FINETUNE_INFO, load_model
from appraiser.pricers import registry
from appraiser.pricers.base import Pricer, parse_price_text
from appraiser.pricers.llm import LLMPricer

runner = CliRunner()


@pytest.fixture(scope="module")
def items(data_dir):
    return read_items(data_dir / "validation.jsonl", limit=5)


@pytest.fixture(scope="module")
def pricer():
    return LLMPricer(max_text_tokens=20, batch_size=5, max_new_tokens=5)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A training run folder as the trainer leaves it: `best/` holds a LoRA adapter and `appraiser.json`."""
    from peft import LoraConfig, get_peft_model

    base, _ = load_model("smollm2-135m")
    torch.manual_seed(0)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    run = tmp_path_factory.mktemp("runs") / "mug-run"
    peft_model.save_pretrained(str(run / "best"))
    info = {"base_model": "smollm2-135m", "prompt": {"max_text_tokens": 20, "exact_cents": False}}
    (run / "best" / FINETUNE_INFO).write_text(json.dumps(info))
    return run


def test_registered_as_an_llm_pricer_that_needs_no_fit():
    entry = registry.get("llm")
    assert entry.kind == "llm" and entry.needs_fit is False
    assert "llm" in registry.names(kind="llm")
    p = registry.create("llm", method="greedy")
    assert isinstance(p, LLMPricer) and p.label == "llm[smollm2-135m,greedy]"


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        LLMPricer(method="mode")
    with pytest.raises(ValueError, match="point must be one of"):
        LLMPricer(point="mode")


def test_median_point_uses_the_distribution_median(pricer, items):
    med = LLMPricer(max_text_tokens=20, batch_size=5, max_new_tokens=5, point="median")
    med._model, med._tokenizer = pricer.model_and_tokenizer()  # share the loaded weights
    assert med.label == "llm[smollm2-135m,median,max_text_tokens=20,max_new_tokens=5]"
    d = med.distributions(items[:1])[0]
    assert med.predict(items[:1])[0].price == d.median


def test_evaluates_five_validation_items(pricer, items):
    result = evaluate(pricer, items, show=False, record=False, cache=False)
    assert len(result.results) == 5
    for r in result.results:
        assert r.guess is not None and r.guess > 0
        assert r.low <= r.high
        assert "mass" in r.raw
    assert result.metrics["mae"] >= 0


def test_greedy_predictions_are_the_parsed_text(pricer, items):
    greedy = LLMPricer(max_text_tokens=20, method="greedy", max_new_tokens=5)
    greedy._model, greedy._tokenizer = pricer.model_and_tokenizer()  # share the loaded weights
    preds = greedy.predict(items[:2])
    for p in preds:
        assert p.raw and p.low is None and p.high is None  # one answer, no interval
        assert p.price is not None and p.price == parse_price_text(p.raw)  # the price is what the text says


def test_saved_pricer_keeps_settings_not_weights(pricer, items, tmp_path):
    pricer.model_and_tokenizer()
    path = pricer.save(tmp_path / "llm.pkl")
    assert path.stat().st_size < 100_000  # settings only, not 500 MB of weights
    again = Pricer.load(path)
    assert isinstance(again, LLMPricer) and again._model is None
    assert again.config() == pricer.config()
    assert again.predict(items[:1])[0].price == pytest.approx(pricer.predict(items[:1])[0].price, rel=1e-4)


def test_run_folder_uses_best_adapter_and_its_prompt_settings(run_folder, items, pricer):
    p = LLMPricer(model=str(run_folder), max_new_tokens=5)
    assert p.adapter == run_folder / "best"
    assert p.prompt_config.max_text_tokens == 20  # from the run's appraiser.json
    assert p.label == "llm[mug-run/best,max_new_tokens=5]"  # its own 20 text tokens unnamed
    assert p.fit_info["adapter_digest"]  # a retrained adapter gets a fresh prediction cache
    assert p.predict(items[:1])[0].price is not None
    tuned = dict(p._model.named_parameters())
    base = dict(pricer.model_and_tokenizer()[0].named_parameters())
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tuned[name], base[name])  # the adapter is merged into the weights
    assert torch.equal(tuned["model.layers.0.self_attn.k_proj.weight"], base["model.layers.0.self_attn.k_proj.weight"])


def test_cli_predict_json():
    res = runner.invoke(app, ["predict", "Stainless steel travel mug, 16 oz", "--json", "--max-text-tokens", "16"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["price"] > 0 and 0 < out["mass"] <= 1
    assert out["low"] <= out["median"] <= out["high"]
    assert out["model"] == "llm[smollm2-135m,max_text_tokens=16]"


def test_cli_predict_sentence_and_greedy():
    res = runner.invoke(app, ["predict", "Travel mug, 16 oz", "--method", "greedy", "--max-text-tokens", "16"])
    assert res.exit_code == 0, res.output
    assert "$" in res.stdout and "greedy" in res.stdout


def test_cli_predict_bad_input_is_one_clear_line():
    res = runner.invoke(app, ["predict", "a mug", "--model", "no-such-model"])
    assert res.exit_code == 2
    assert "unknown model 'no-such-model'" in res.output
    res = runner.invoke(app, ["predict", "a mug", "--method", "mode"])
    assert res.exit_code == 2 and "unknown method" in res.output


def test_a_damaged_or_incomplete_adapter_is_one_line(run_folder, tmp_path):
    """From a probe: a truncated adapter_model.safetensors was a SafetensorError traceback, a missing one sent
    peft to the (unreachable) hub for a minute, and a damaged adapter_config.json was not named."""
    import shutil

    cases = {
        "truncated": lambda f: f.joinpath("adapter_model.safetensors").write_bytes(b"\x00" * 100),
        "missing": lambda f: f.joinpath("adapter_model.safetensors").unlink(),
        "config": lambda f: f.joinpath("adapter_config.json").write_text("{not json"),
    }
    expected = {"truncated": "weights cannot be loaded", "missing": "an incomplete copy", "config": "not readable"}
    for name, damage in cases.items():
        folder = tmp_path / name
        shutil.copytree(run_folder, folder)
        damage(folder / "best")
        res = runner.invoke(app, ["predict", "a mug", "--model", str(folder), "--max-text-tokens", "8"])
        assert res.exit_code == 2 and expected[name] in res.output and "Traceback" not in res.output, res.output


def test_a_run_without_an_adapter_says_so_instead_of_asking_the_hub():
    """From a probe: a run killed before its first save (or one still running), and RUN/best of a run without
    probes, were taken for hub ids: a minute of network timeouts, then "unknown model"."""
    from appraiser.data.io import DataError
    from appraiser.runs.store import RunStore

    store = RunStore()
    run = store.create(name="early", status="failed")
    with pytest.raises(DataError, match=r"\(failed\) has no saved adapter yet: resume it with"):
        LLMPricer(model="early")
    with pytest.raises(DataError, match="has no best/ adapter"):
        LLMPricer(model="early/best")
    (run.folder / "final").mkdir()  # a final/ folder without its files is no adapter either
    with pytest.raises(DataError, match="no saved adapter yet"):
        LLMPricer(model=f"{run.id}/final")
    hosted = store.create(name="remote", kind="hosted", external_id="ftjob-1", status="succeeded")
    with pytest.raises(DataError, match="hosted fine-tuning job"):
        LLMPricer(model=hosted.id)
