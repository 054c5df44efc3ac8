"""Reading a price out of a causal LM, batched: greedy text, or the model's own distribution over prices.

Prompts end with "Price is $", so the model's next tokens are the price. Three ways to read it:

- **greedy**: batched `generate` (left padding, no sampling), parsed with `parse_price_text`.
- **beam** (the "expected" method for digit-splitting tokenizers such as SmolLM2 and Gemma, which write
  "123.00" as "1","2","3",".","0","0"): a beam over digit tokens. Each step keeps the `beam_width` most
  probable unfinished numbers per item; a number finishes when the model writes "." or an end token
  (the cents after "." carry no dollars for whole-dollar completions, and under $1 for exact ones, so
  we stop there). All finished numbers are kept, giving a distribution over prices: its mean, median
  and an `interval` quantile range. `mass` is the probability the kept numbers hold - how much of the
  model's belief the distribution covers (low mass means the model wants to write something else).
  One prefill per batch, then one token per live hypothesis per step, reusing the KV cache.
- **topk** (the "expected" method for tokenizers with multi-digit number tokens, e.g. Llama 3's 0-999):
  the course's trick, a probability-weighted average over the `beam_width` most likely number tokens
  at the first position.

A distribution also reports its quantiles at 5%, 10%, …, 95% (`QUANTILE_LEVELS`), written at the end of its
`raw` text (`format_quantiles`; read back with `parse_quantiles`), so they travel wherever a prediction goes
(the evaluator's cache, the leaderboard, a predictions file): the evaluator scores the central 10%…90%
intervals and the PIT from them (a reliability chart), and conformalised quantile regression
(`pricers.conformal.ConformalQuantile`) corrects any of them.

`predict_prices` is what the pricer, the CLI and the trainer's probe call.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from appraiser.pricers.base import parse_price_text

METHODS = ("expected", "greedy", "beam", "topk", "head")
#: Unfinished numbers less likely than this are dropped: they could add at most this much mass.
_MIN_PROB = 1e-7
_NUMBER_PIECE = re.compile(r"[\d.,]+")
#: The quantiles a distribution reports: the ends of every central 10%…90% interval, and the median.
QUANTILE_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))
_QUANTILE_TAG = "quantiles 5-95%: "


def format_quantiles(values: Sequence[float]) -> str:
    """`QUANTILE_LEVELS`' values as the tail of a `raw` text (whole dollars print without ".0")."""
    return _QUANTILE_TAG + " ".join(f"{v:g}" for v in values)


def parse_quantiles(raw: str | None) -> list[float] | None:
    """The quantiles `format_quantiles` wrote into `raw` (None when it holds none, e.g. a greedy or API guess)."""
    if not raw:
        return None
    at = raw.rfind(_QUANTILE_TAG)
    if at < 0:
        return None
    try:
        values = [float(v) for v in raw[at + len(_QUANTILE_TAG) :].split()]
    except ValueError:
        return None
    return values if len(values) == len(QUANTILE_LEVELS) else None


@dataclass
class PriceDistribution:
    """A price read from a model: point estimates, an interval, and how much probability backs them.

    `support` lists the finished numbers the beam found as (digits, probability before renormalizing),
    most probable first (empty for greedy); `quantiles` are its quantiles at `QUANTILE_LEVELS` (empty for greedy).
    """

    mean: float
    median: float
    low: float | None
    high: float | None
    greedy: float | None
    mass: float
    raw: str
    support: list[tuple[str, float]] = field(default_factory=list)
    quantiles: list[float] = field(default_factory=list)

    @property
    def price(self) -> float:
        return self.mean

    def cdf(self, price: float) -> float:
        """The model's probability that the price is at most `price` (over the kept mass; 0 with no support)."""
        total = sum(p for _, p in self.support)
        return sum(p for t, p in self.support if float(int(t)) <= price) / total if total > 0 else 0.0


@dataclass(frozen=True)
class NumberVocab:
    """The tokens a price is written with, for one tokenizer."""

    number_ids: list[int]  # tokens that are all ASCII digits ("0".."9", or "0".."999" for Llama 3)
    number_text: list[str]
    dot_id: int | None
    end_ids: list[int]
    multi_digit: bool  # the tokenizer writes "123" as one token


def _token_for(tokenizer: Any, text: str, required: bool = True) -> int | None:
    """The token that writes `text` inside a number ("12.00"): SentencePiece tokenizers may add a "▁"
    piece when `text` is encoded alone, so look for the piece that decodes to exactly `text`."""
    for t in tokenizer.encode(f"12{text}00" if text == "." else text, add_special_tokens=False):
        if tokenizer.decode([t]) == text:
            return int(t)
    if required:
        raise ValueError(f"tokenizer has no single token for {text!r}")
    return None


def number_vocab(tokenizer: Any, model: Any = None) -> NumberVocab:
    """Find the digit, "." and end tokens. A tokenizer that splits "1234567890" into single digits
    only ever shows the model single-digit tokens, so only those take part in the beam."""
    sample = tokenizer.encode("1234567890", add_special_tokens=False)
    pieces = [tokenizer.decode([t]) for t in sample]
    multi_digit = any(len(p.strip()) > 1 for p in pieces)
    if multi_digit:
        vocab = tokenizer.get_vocab()
        pairs = sorted((i, s) for s, i in vocab.items() if s.isascii() and s.isdigit())
    else:
        pairs = [(_token_for(tokenizer, d), d) for d in "0123456789"]
    end: set[int] = set()
    if tokenizer.eos_token_id is not None:
        end.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        end.update(int(e) for e in (gen_eos if isinstance(gen_eos, list | tuple) else [gen_eos]))
    return NumberVocab(
        number_ids=[i for i, _ in pairs],
        number_text=[s for _, s in pairs],
        dot_id=_token_for(tokenizer, ".", required=False),
        end_ids=sorted(end),
        multi_digit=multi_digit,
    )


# ------------------------------------------------------------------------------------ distributions


def _quantile(values: list[float], cdf: list[float], q: float) -> float:
    for v, c in zip(values, cdf, strict=True):
        if c >= q - 1e-12:
            return v
    return values[-1]


def summarize(support: dict[str, float], interval: float, greedy: float | None) -> PriceDistribution | None:
    """Turn finished numbers (digit text -> probability) into a distribution, renormalized over the kept mass."""
    by_value: dict[float, float] = {}
    for text, p in support.items():
        v = float(int(text))
        by_value[v] = by_value.get(v, 0.0) + p
    mass = sum(by_value.values())
    if not by_value or mass <= 0:
        return None
    values = sorted(by_value)
    probs = [by_value[v] / mass for v in values]
    cdf, acc = [], 0.0
    for p in probs:
        acc += p
        cdf.append(acc)
    mean = sum(v * p for v, p in zip(values, probs, strict=True))
    tail = (1 - interval) / 2
    median = _quantile(values, cdf, 0.5)
    low, high = _quantile(values, cdf, tail), _quantile(values, cdf, 1 - tail)
    ranked = sorted(support.items(), key=lambda kv: -kv[1])
    top = ", ".join(f"{int(t)} ({p / mass:.0%})" for t, p in ranked[:3])
    quantiles = [_quantile(values, cdf, q) for q in QUANTILE_LEVELS]
    raw = f"mean {mean:.2f}, median {median:g}, {interval:.0%} {low:g}-{high:g}, mass {mass:.2f}; top: {top}; "
    raw += format_quantiles(quantiles)
    return PriceDistribution(mean, median, low, high, greedy, mass, raw, ranked, quantiles)


# ------------------------------------------------------------------------------------ batching


def length_batches(tokenizer: Any, prompts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of `prompts` in batches of at most `batch_size` prompts of similar token length (less
    padding), longest first. Every index appears once; callers put the results back in order."""
    lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def encode_prompts(tokenizer: Any, prompts: list[str], device: Any) -> tuple[Any, Any]:
    """(input_ids, attention_mask) of `prompts` on `device`, LEFT-padded so every prompt ends at the
    last column (where decoding continues); sets the tokenizer's pad token to EOS if it has none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def prefill(model: Any, input_ids: Any, attention_mask: Any) -> tuple[Any, Any, Any]:
    """Run the prompts once; return next-token logits, the KV cache and the last positions.

    Positions come from the attention mask, so a left-padded prompt sees the same positions as alone.
    Only the last position's logits are computed (Gemma's vocabulary is 262k wide).
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1], out.past_key_values, position_ids[:, -1]


def _scores(logits: Any, cols: Any) -> tuple[Any, list[int]]:
    """(float32 log-probs of the token ids `cols`, each row's most likely token id over the whole vocabulary).

    Only a few columns are read, so no full-vocabulary log_softmax is materialised: one max pass and one
    exp-and-sum pass give each row's normaliser. Gemma's vocabulary is 262k wide, and casting every
    hypothesis row to float32 for a log_softmax was a third of batched decoding time in bf16. In bf16 the
    sum accumulates in float32 and is rounded once (at most ~0.004 in the log normaliser, less than the
    rounding of the bf16 logits themselves); in float32 it is exact.
    """
    import torch

    top, best = logits.max(-1)
    total = torch.exp(logits - top[:, None]).sum(-1)
    norm = top.float() + total.float().log()
    return logits.index_select(1, cols).float() - norm[:, None], best.tolist()


# ------------------------------------------------------------------------------------ methods


class _CopyCache:
    """Each live hypothesis is its own batch row holding its own copy of its item's prompt cache.

    Works with any attention implementation; costs a copy of every row's cache at every step.
    """

    def __init__(self, model: Any, cache: Any, attention_mask: Any, last_pos: Any):
        self.model, self.cache, self.attention_mask, self.last_pos = model, cache, attention_mask, last_pos

    def advance(self, parents: list[int], items: list[int], token_ids: Any) -> Any:
        import torch

        idx = torch.tensor(parents, device=token_ids.device)
        self.cache.reorder_cache(idx)
        mask = self.attention_mask[idx]
        self.attention_mask = torch.cat([mask, mask.new_ones(len(parents), 1)], dim=1)
        self.last_pos = self.last_pos[idx] + 1
        out = self.model(
            input_ids=token_ids[:, None],
            attention_mask=self.attention_mask,
            position_ids=self.last_pos[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1]


class _TreeCache:
    """One batch row per item: its prompt cache is kept once, and each step appends one slot per live
    hypothesis; a custom 4D attention mask lets a slot see the prompt, its own ancestors and itself
    (tree attention). No cache is copied per hypothesis, which on a CPU is a third of the decoding time.
    """

    def __init__(self, model: Any, cache: Any, attention_mask: Any, last_pos: Any):
        import torch

        self.model, self.cache, self.last_pos = model, cache, last_pos
        dtype = next(model.parameters()).dtype
        self.dtype = dtype if dtype.is_floating_point else torch.float32
        self.min = torch.finfo(self.dtype).min
        self.prompt_mask = torch.zeros(attention_mask.shape, dtype=self.dtype, device=attention_mask.device)
        self.prompt_mask.masked_fill_(attention_mask == 0, self.min)
        self.kv_len = attention_mask.shape[1]
        self.ancestors: list[list[int]] = [[] for _ in range(attention_mask.shape[0])]  # cache columns per row

    def advance(self, parents: list[int], items: list[int], token_ids: Any) -> Any:
        import torch

        device = token_ids.device
        n_items = self.prompt_mask.shape[0]
        slot: list[int] = []
        counts = [0] * n_items
        for item in items:
            slot.append(counts[item])
            counts[item] += 1
        k = max(counts)
        ancestors = [self.ancestors[p] + [self.kv_len + s] for p, s in zip(parents, slot, strict=True)]
        item_t = torch.tensor(items, device=device)
        slot_t = torch.tensor(slot, device=device)
        ids = torch.zeros((n_items, k), dtype=token_ids.dtype, device=device)
        ids[item_t, slot_t] = token_ids
        depth = torch.tensor([len(a) for a in ancestors], device=device)
        pos = (self.last_pos[:, None] + 1).repeat(1, k)
        pos[item_t, slot_t] = self.last_pos[item_t] + depth
        mask = torch.full((n_items, 1, k, self.kv_len + k), self.min, dtype=self.dtype, device=device)
        mask[:, 0, :, : self.prompt_mask.shape[1]] = self.prompt_mask[:, None, :]
        diag = torch.arange(k, device=device)
        mask[:, 0, diag, self.kv_len + diag] = 0  # every slot sees itself (unused slots too: no empty rows)
        rows = [i for i, a in enumerate(ancestors) for _ in a]
        cols = [c for a in ancestors for c in a]
        r_t = torch.tensor(rows, device=device)
        mask[item_t[r_t], 0, slot_t[r_t], torch.tensor(cols, device=device)] = 0
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=self.cache, use_cache=True
        )
        self.cache = out.past_key_values
        self.kv_len += k
        self.ancestors = ancestors
        return out.logits[item_t, slot_t]


def _tree_ok(model: Any, prompt_len: int, beam_width: int, max_new_tokens: int) -> bool:
    """Tree attention needs an attention that takes custom 4D masks, and a cache that never drops columns
    (a sliding window longer than the whole decode)."""
    cfg = getattr(model, "config", None)
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ("eager", "sdpa"):
        return False
    cfg = getattr(cfg, "text_config", None) or cfg
    window = getattr(cfg, "sliding_window", None)
    return window is None or prompt_len + (beam_width + 1) * max_new_tokens < window


def _beam_batch(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    vocab: NumberVocab,
    *,
    beam_width: int,
    max_new_tokens: int,
    interval: float,
    tree: bool | None = None,
) -> list[PriceDistribution | None]:
    """The digit beam for one batch of prompts. `tree`: tree attention (default where it is safe) or
    one cache row per hypothesis; both give the same numbers."""
    import torch

    device = input_ids.device
    n_items = input_ids.shape[0]
    logits, cache, last_pos = prefill(model, input_ids, attention_mask)
    if tree is None:
        tree = _tree_ok(model, input_ids.shape[1], beam_width, max_new_tokens)
    state = (_TreeCache if tree else _CopyCache)(model, cache, attention_mask, last_pos)
    num_ids = torch.tensor(vocab.number_ids, device=device)
    term_ids = torch.tensor(vocab.end_ids + ([vocab.dot_id] if vocab.dot_id is not None else []), device=device)
    read_ids = torch.cat([num_ids, term_ids])  # the only columns the beam reads
    n_num = num_ids.numel()
    id_to_col = {t: c for c, t in enumerate(vocab.number_ids)}
    term_set = set(term_ids.tolist())
    min_lp = math.log(_MIN_PROB)

    # Live hypotheses ("rows"), grouped by item: item index, digits so far, log-prob, on the greedy path.
    row_item = list(range(n_items))
    row_text = [""] * n_items
    row_score = torch.zeros(n_items, device=device)
    row_greedy = [True] * n_items
    finished: list[dict[str, float]] = [{} for _ in range(n_items)]
    greedy: list[float | None] = [None] * n_items

    for step in range(max_new_tokens):
        logp, best = _scores(logits, read_ids)
        num_lp = logp[:, :n_num]  # rows x numbers
        if step > 0:  # every row holds at least one digit: it may finish here
            end_lp = (row_score + torch.logsumexp(logp[:, n_num:], -1)).tolist()
            for r, item in enumerate(row_item):
                finished[item][row_text[r]] = math.exp(end_lp[r])
        greedy_child: dict[int, tuple[int, int]] = {}  # item -> (row, column) the greedy path extends with
        for r, item in enumerate(row_item):
            if row_greedy[r]:
                if best[r] in id_to_col:
                    greedy_child[item] = (r, id_to_col[best[r]])
                elif best[r] in term_set and row_text[r]:
                    greedy[item] = float(int(row_text[r]))
        if step + 1 >= max_new_tokens:  # no room left for a terminator after another digit
            break
        cand = (row_score[:, None] + num_lp).cpu()
        parents: list[int] = []
        cols: list[int] = []
        start = 0
        while start < len(row_item):  # rows of one item are contiguous
            item = row_item[start]
            end = start
            while end < len(row_item) and row_item[end] == item:
                end += 1
            block = cand[start:end].flatten()
            scores, flat = block.topk(min(beam_width, block.numel()))
            chosen = [
                (start + int(f) // cand.shape[1], int(f) % cand.shape[1])
                for s, f in zip(scores, flat, strict=True)
                if float(s) > min_lp
            ]
            g = greedy_child.get(item)
            if g is not None and g not in chosen:
                chosen.append(g)
            for r, c in chosen:
                parents.append(r)
                cols.append(c)
            start = end
        if not parents:
            break
        row_greedy = [greedy_child.get(row_item[r]) == (r, c) for r, c in zip(parents, cols, strict=True)]
        idx = torch.tensor(parents, device=device)
        col_t = torch.tensor(cols, device=device)
        row_score = row_score[idx] + num_lp[idx, col_t]
        row_text = [row_text[r] + vocab.number_text[c] for r, c in zip(parents, cols, strict=True)]
        row_item = [row_item[r] for r in parents]
        logits = state.advance(parents, row_item, num_ids[col_t])

    return [summarize(finished[i], interval, greedy[i]) for i in range(n_items)]


def _topk_batch(
    model: Any, input_ids: Any, attention_mask: Any, vocab: NumberVocab, *, k: int, interval: float
) -> list[PriceDistribution | None]:
    """The course's method: weight the k most likely number tokens at the first position by probability."""
    import torch

    logits, _, _ = prefill(model, input_ids, attention_mask)
    num_ids = torch.tensor(vocab.number_ids, device=logits.device)
    num_lp, best = _scores(logits, num_ids)
    scores, cols = num_lp.topk(min(k, num_ids.numel()), dim=-1)
    id_to_text = dict(zip(vocab.number_ids, vocab.number_text, strict=True))
    results = []
    for i in range(num_lp.shape[0]):
        support = {vocab.number_text[c]: math.exp(s) for s, c in zip(scores[i].tolist(), cols[i].tolist(), strict=True)}
        g = id_to_text.get(best[i])
        results.append(summarize(support, interval, None if g is None else float(int(g))))
    return results


def _greedy_batch(
    model: Any, tokenizer: Any, input_ids: Any, attention_mask: Any, vocab: NumberVocab, *, max_new_tokens: int
) -> list[PriceDistribution | None]:
    """Batched greedy generation, parsed; `mass` is the probability of the generated text."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=vocab.end_ids or None,
        return_dict_in_generate=True,
        output_scores=True,
    )
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    new = out.sequences[:, input_ids.shape[1] :]
    logps = torch.stack([s.float().log_softmax(-1) for s in out.scores], dim=1)  # items x steps x vocab
    tok_lp = logps.gather(-1, new[:, : logps.shape[1], None]).squeeze(-1)
    ends = set(vocab.end_ids)
    results: list[PriceDistribution | None] = []
    for i in range(new.shape[0]):
        ids = new[i].tolist()[: logps.shape[1]]
        n = next((j + 1 for j, t in enumerate(ids) if t in ends), len(ids))
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        value = parse_price_text(text)
        if value is None:
            results.append(None)
            continue
        # Probability of the number's own tokens (and an end token right after them), not of trailing text.
        k = 0
        while k < n and _NUMBER_PIECE.fullmatch(tokenizer.decode(ids[k : k + 1])):
            k += 1
        if k < n and ids[k] in ends:
            k += 1
        mass = math.exp(float(tok_lp[i, :k].sum()))
        results.append(PriceDistribution(value, value, value, value, value, mass, text.strip()))
    return results


def predict_prices(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    method: str = "expected",
    batch_size: int = 16,
    beam_width: int = 8,
    max_new_tokens: int = 8,
    interval: float = 0.8,
    progress: Any = None,
) -> list[PriceDistribution | None]:
    """One `PriceDistribution` per prompt (None where the model wrote no number), in order.

    method: "expected" (the beam for digit-splitting tokenizers, the course's top-k otherwise),
    "greedy", "beam" / "topk" to force one, or "head": the model's regression head (`inference.head`;
    one forward pass, a point price without interval). `progress(n_done)` is called after each batch.
    """
    import torch

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if not 0 < interval < 1:
        raise ValueError("interval must be between 0 and 1")
    if not prompts:
        return []
    if method == "head":
        from appraiser.inference.head import find_head

        if find_head(model) is None:
            raise ValueError("method 'head' needs a model fine-tuned with a regression head (--head-weight)")
        vocab = None
    else:
        vocab = number_vocab(tokenizer, model)
    if method == "expected":
        method = "topk" if vocab.multi_digit else "beam"
    device = next(model.parameters()).device
    results: list[PriceDistribution | None] = [None] * len(prompts)
    done = 0
    was_training = model.training
    model.eval()  # no dropout while reading prices (the trainer's probe may call this mid-training)
    try:
        with torch.inference_mode():
            for batch in length_batches(tokenizer, prompts, batch_size):
                input_ids, attention_mask = encode_prompts(tokenizer, [prompts[i] for i in batch], device)
                if method == "head":
                    from appraiser.inference.head import predict_with_head

                    got = [
                        PriceDistribution(p, p, None, None, None, 1.0, f"{p:.2f}")
                        for p in predict_with_head(model, input_ids, attention_mask).tolist()
                    ]
                elif method == "greedy":
                    got = _greedy_batch(
                        model, tokenizer, input_ids, attention_mask, vocab, max_new_tokens=max_new_tokens
                    )
                elif method == "topk":
                    got = _topk_batch(model, input_ids, attention_mask, vocab, k=beam_width, interval=interval)
                else:
                    got = _beam_batch(
                        model,
                        input_ids,
                        attention_mask,
                        vocab,
                        beam_width=beam_width,
                        max_new_tokens=max_new_tokens,
                        interval=interval,
                    )
                for i, r in zip(batch, got, strict=True):
                    results[i] = r
                done += len(batch)
                if progress is not None:
                    progress(done)
    finally:
        model.train(was_training)
    return results
