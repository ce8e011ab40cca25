"""Needle-in-a-haystack prompts with distractor facts (after Wu et al. 2024, arXiv 2404.15574), fully synthetic.

A prompt of exactly ``length`` tokens:

    [BOS] filler ... FACT_1 ... filler ... FACT_K ... filler  QUESTION

- Filler: the package's English sentences in a seeded random order (the first one may be cut at
  its start so the prompt has exactly ``length`` tokens).
- Facts: ``K = 1 + n_distractors`` sentences of one form, ``"The secret code for the {colour}
  {thing} is {code}."``, each with its own key (colour, thing) and a random 5-digit code, at
  seeded random sentence boundaries. One of them, drawn uniformly, is the **needle**: the
  question asks for its code. All facts of a prompt have the same token length, so position ``j``
  of the needle corresponds to position ``j`` of every distractor (matched controls).
- Question (Wu et al.'s form): ``"\\n\\nBased on the content of the book, Question: What is the
  secret code for the {colour} {thing}?\\nAnswer:"``. The prompt ends at the question: the answer
  (the code) is not primed by the needle's own prefix.

Words are encoded one at a time (``tasks/text.encode_words``), so the code's tokens in the needle
are exactly the answer tokens, whatever the tokenizer does across word boundaries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import InputError
from .text import WordSeq, encode_text, encode_words, sentences, split_words
from .vocab import bos_id

COLOURS = ("blue", "red", "green", "yellow", "black", "white", "orange", "purple", "silver", "brown", "pink", "grey")
THINGS = ("locker", "suitcase", "mailbox", "cabinet", "safe", "drawer", "gate", "garage", "chest", "door", "box",
          "vault")
FACT = "The secret code for the {c} {t} is {code}."
QUESTION = "\n\nBased on the content of the book, Question: What is the secret code for the {c} {t}?\nAnswer:"
N_DISTRACTORS = 3


@dataclass(frozen=True)
class NeedleCase:
    """One prompt.

    - ``ids [S]``: the prompt (BOS first when the tokenizer has one), ending at the question;
    - ``answer_ids``: the code's tokens as they stand in the needle (what a copying model emits);
    - ``response_ids``: the full answer an instruct model gives, "The secret code for the {colour}
      {thing} is {code}" (words encoded one at a time; it ends with ``answer_ids``);
    - ``fact_spans``: ``[start, end)`` of every fact sentence, in prompt order, all the same length;
      ``needle_index`` says which one is the needle (the others are distractors);
    - ``answer_offset``: where the code starts inside a fact (the same for all facts);
    - ``haystack``: ``[start, end)`` ranges of filler tokens; ``depth``: the needle's relative position;
    - ``codes``: every fact's code (prompt order); ``key``: the needle's (colour, thing)."""

    ids: torch.Tensor
    answer_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    fact_spans: tuple[tuple[int, int], ...]
    needle_index: int
    answer_offset: int
    haystack: tuple[tuple[int, int], ...]
    depth: float
    codes: tuple[str, ...]
    key: tuple[str, str]

    @property
    def needle_span(self) -> tuple[int, int]:
        return self.fact_spans[self.needle_index]

    @property
    def distractor_spans(self) -> tuple[tuple[int, int], ...]:
        return tuple(s for i, s in enumerate(self.fact_spans) if i != self.needle_index)

    @property
    def answer_span(self) -> tuple[int, int]:
        a = self.needle_span[0] + self.answer_offset
        return a, a + len(self.answer_ids)

    @property
    def code(self) -> str:
        return self.codes[self.needle_index]


def _mid(tokenizer: Any, words: Sequence[str]) -> WordSeq:
    """``words`` encoded as they stand mid-text (a space before the first word), one word at a time."""
    ws = encode_words(tokenizer, ["."] + list(words))
    a = ws.spans[1][0]
    return WordSeq(ws.ids[a:], ws.words[1:], tuple((x - a, y - a) for x, y in ws.spans[1:]))


def frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids before and after the user's text: the chat template's user turn and assistant
    prompt when the tokenizer has one (Wu et al. use it for instruct models), else just BOS (if any)."""
    bos = bos_id(tokenizer)
    if getattr(tokenizer, "chat_template", None):
        marker = "XQXMARKXQX"
        text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                             add_generation_prompt=True)
        if text.count(marker) == 1:
            head, tail = text.split(marker)
            pre = [int(x) for x in tokenizer.encode(head, add_special_tokens=False)]
            post = [int(x) for x in tokenizer.encode(tail, add_special_tokens=False)]
            if bos is not None and (not pre or pre[0] != bos):
                pre = [bos] + pre
            return pre, post
    return ([] if bos is None else [bos]), []


def _draw_facts(tokenizer: Any, k: int, rng: random.Random) -> list[tuple[str, str, str, tuple[int, ...], int, int]]:
    """``k`` facts with distinct keys and codes and one token layout:
    (colour, thing, code, ids, code offset, code length)."""
    keys = [(c, t) for c in COLOURS for t in THINGS]
    for _ in range(200):
        chosen = rng.sample(keys, k)
        codes: list[str] = []
        while len(codes) < k:
            code = str(rng.randint(10000, 99999))
            if code not in codes:
                codes.append(code)
        facts = []
        for (c, t), code in zip(chosen, codes):
            ws = _mid(tokenizer, split_words(FACT.format(c=c, t=t, code=code)))
            a, b = ws.spans[ws.words.index(code)]
            facts.append((c, t, code, tuple(ws.ids), a, b - a))
        if len({(len(f[3]), f[4], f[5]) for f in facts}) == 1:
            return facts
    raise InputError(f"could not draw {k} facts of one token length with this tokenizer")


def needle_case(tokenizer: Any, length: int, rng: random.Random, pool: Sequence[WordSeq] | None = None, *,
                n_distractors: int = N_DISTRACTORS) -> NeedleCase:
    """A prompt of exactly ``length`` tokens with ``1 + n_distractors`` facts at random sentence boundaries."""
    if n_distractors < 0:
        raise InputError(f"n_distractors must be >= 0, got {n_distractors}")
    pool = list(pool) if pool is not None else [encode_text(tokenizer, s) for s in sentences()]
    k = 1 + n_distractors
    facts = _draw_facts(tokenizer, k, rng)
    needle = rng.randrange(k)
    c, t = facts[needle][0], facts[needle][1]
    pre, post = frame(tokenizer)
    question = [int(x) for x in tokenizer.encode(QUESTION.format(c=c, t=t), add_special_tokens=False)] + post
    off = len(pre)
    fact_len = len(facts[0][3])
    budget = length - off - k * fact_len - len(question)
    longest = max(len(s) for s in pool)
    if budget < max(2 * longest, (k + 1) * 4):
        raise InputError(f"a needle prompt of {length} tokens leaves no room for a haystack "
                         f"({k} facts of {fact_len} tokens + question {len(question)} tokens)")
    # filler sentences until the budget is exceeded by the first one (cut at its start below)
    filler: list[tuple[int, ...]] = []
    used = 0
    order = list(pool)
    while used < budget:
        rng.shuffle(order)
        for s in order:
            if used >= budget:
                break
            # sentences after the first start with a space, as in running prose
            ids = tuple(s.ids) if not filler else _mid(tokenizer, s.words).ids
            filler.append(ids)
            used += len(ids)
    excess = used - budget
    while excess > 0:          # cut the haystack's start (mid-sentence) to the exact length
        cut = min(excess, len(filler[0]))
        filler[0] = filler[0][cut:]
        excess -= cut
        if not filler[0]:
            filler.pop(0)
    # facts at distinct sentence boundaries (never before the first filler sentence)
    slots = sorted(rng.sample(range(1, len(filler) + 1), k)) if len(filler) >= k else None
    if slots is None:
        raise InputError(f"a needle prompt of {length} tokens has too few filler sentences for {k} facts")
    seq: list[int] = list(pre)
    spans: list[tuple[int, int]] = []
    hay: list[tuple[int, int]] = []
    fi = 0
    for i, sent in enumerate(filler):
        a = len(seq)
        seq.extend(sent)
        if hay and hay[-1][1] == a:
            hay[-1] = (hay[-1][0], len(seq))
        else:
            hay.append((a, len(seq)))
        while fi < k and slots[fi] == i + 1:
            a = len(seq)
            seq.extend(facts[fi][3])
            spans.append((a, len(seq)))
            fi += 1
    seq.extend(question)
    if len(seq) != length:
        raise AssertionError(f"needle prompt has {len(seq)} tokens, expected {length}")
    code_at = facts[0][4]
    ns = spans[needle]
    answer = tuple(seq[ns[0] + code_at: ns[0] + code_at + facts[0][5]])
    response = tuple(int(x) for x in encode_words(tokenizer, split_words(FACT.format(c=c, t=t, code=facts[needle][2]))[:-1]).ids)
    if response[-len(answer):] != answer:
        raise InputError("the tokenizer encodes the code differently in the answer than in the needle")
    depth = (ns[0] - off) / max(1, length - off - len(question))
    return NeedleCase(ids=torch.tensor(seq, dtype=torch.long), answer_ids=answer, response_ids=response,
                      fact_spans=tuple(spans),
                      needle_index=needle, answer_offset=code_at, haystack=tuple(hay), depth=round(depth, 4),
                      codes=tuple(f[2] for f in facts), key=(c, t))


def needle_cases(tokenizer: Any, n: int, lengths: Sequence[int], *, seed: int,
                 n_distractors: int = N_DISTRACTORS) -> list[NeedleCase]:
    """``n`` cases, seeded; lengths cycle through ``lengths`` (cases of one length can share a batch)."""
    if n < 1 or not lengths:
        raise InputError(f"needle_cases needs n >= 1 and at least one length, got n={n}, lengths={list(lengths)}")
    rng = random.Random(seed)
    pool = [encode_text(tokenizer, s) for s in sentences()]
    return [needle_case(tokenizer, int(lengths[i % len(lengths)]), rng, pool, n_distractors=n_distractors)
            for i in range(n)]
