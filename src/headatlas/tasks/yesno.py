"""Yes/no decision prompts for the negative heads (Yu et al. 2024, "Correcting negative bias in LLMs
through negative attention score alignment", arXiv 2408.00137).

Each prompt names both answers in its instruction, then asks an easy verifiable question::

    Answer Yes or No.
    Question: Is 3 + 4 = 7?
    Answer:

The answer words vary over :data:`OPTION_PAIRS` (Yes/No first, then True/False, Correct/Wrong, ...): the
detector asks whether a head attends to the *negative option* of the instruction, which a random-weight
head with an accidental preference for one token cannot do consistently across word pairs.

The pairs are chosen so that word frequency cannot pass for negativity: negative words are usually the rarer
of the two (Incorrect, Invalid, Disagree), so a head that attends to rare words would "prefer the negative
option" on such pairs. In :data:`OPTION_PAIRS` the negative word is the more frequent one in 3 of 7 pairs
(Yes/No, Correct/Wrong, Sure/Never), the mean Zipf difference negative - positive is +0.08 (wordfreq; a
rare-word head gains nothing on average), no word is used twice, and both words of a pair must have the same
number of tokens (checked per tokenizer). :func:`frequency_gaps` gives the numbers.

Items come in *groups* of two with the same form, one true and one false (``"Is 3 + 4 = 7?"`` /
``"Is 3 + 4 = 8?"``; ``"Is 9 greater than 4?"`` / ``"Is 4 greater than 9?"``; ``"Is a dog an animal?"`` /
``"Is a chair an animal?"``), so the items are balanced 50/50 true and false. Every item is written
twice, with the answers named in either order (``"Answer Yes or No."`` and ``"Answer No or Yes."``), the
matched control that separates attention to the token "No" from attention to a position.

The instruction is built from separately encoded pieces (``"Answer"``, ``" Yes"``, ``" or"``, ``" No"``,
``"."``) so the positions of the two answer words are known exactly; the model's answer is read as the
logits of the same tokens ``" Yes"`` and ``" No"`` at the final position (:func:`answer_ids`: a tokenizer
that splits them is read by first tokens, and the attention to a word is the mean over its tokens; only
answer-word pairs whose two words have the same number of tokens are used).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import InputError
from .text import pad_id
from .vocab import bos_id, encode

ANIMALS = ("dog", "cat", "horse", "cow", "bird", "fish", "lion", "tiger", "mouse", "rabbit", "sheep", "bear")
THINGS = ("chair", "table", "spoon", "book", "car", "cup", "door", "shoe", "clock", "pencil", "window", "bottle")
FRUITS = ("apple", "banana", "orange", "grape", "pear", "lemon", "cherry", "peach")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "brown", "purple")


# (positive, negative) answer words; the first pair is the paper's Yes/No. Frequency-balanced (module docstring):
# Zipf(negative) - Zipf(positive) = +0.85, -0.77, +0.60, +0.24, -0.13, -0.05, -0.20.
_PAIRS = (("Yes", "No"), ("True", "False"), ("Correct", "Wrong"), ("Sure", "Never"), ("Yep", "Nope"),
          ("Approve", "Reject"), ("Positive", "Negative"))
OPTION_PAIRS: tuple[tuple[str, str], ...] = _PAIRS + tuple((a.lower(), b.lower()) for a, b in _PAIRS)


@dataclass
class YesNoBatch:
    """Tokenised yes/no prompts (right-padded), two per item (both answer orders).

    - ``ids [B, S]``; ``last [B]`` the answer position; ``q_start [B]`` the first position after the instruction
    - ``yes_mask``/``no_mask [B, S]`` bool: the tokens of the positive / negative answer word in the instruction
    - ``yes_id``/``no_id [B]``: the tokens the answer is read from (:func:`answer_ids`)
    - ``truth [B]`` bool (the correct answer is the positive word); ``item [B]`` the item index; ``group [B]``
      the true/false group; ``pair [B]`` the index of the answer-word pair in ``pairs``; ``no_first [B]``
      bool (the instruction names the negative word first); ``questions``: the question of each prompt
    - ``dropped``: answer-word pairs left out because the tokenizer gives both words the same first token
    """

    ids: torch.Tensor
    last: torch.Tensor
    q_start: torch.Tensor
    yes_mask: torch.Tensor
    no_mask: torch.Tensor
    yes_id: torch.Tensor
    no_id: torch.Tensor
    truth: torch.Tensor
    item: torch.Tensor
    group: torch.Tensor
    pair: torch.Tensor
    no_first: torch.Tensor
    pairs: list[tuple[str, str]]
    questions: list[str]
    dropped: list[tuple[str, str]]

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def question_groups(n_groups: int, *, seed: int) -> list[tuple[tuple[str, bool], tuple[str, bool]]]:
    """``n_groups`` groups of (true question, false question) pairs, forms cycled (arithmetic, comparison,
    category: animals, fruit), seeded."""
    rng = random.Random(seed)
    out = []
    for g in range(n_groups):
        form = g % 4
        if form == 0:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            wrong = a + b + rng.choice((-2, -1, 1, 2))
            out.append(((f"Is {a} + {b} = {a + b}?", True), (f"Is {a} + {b} = {wrong}?", False)))
        elif form == 1:
            a, b = rng.sample(range(1, 20), 2)
            hi, lo = max(a, b), min(a, b)
            out.append(((f"Is {hi} greater than {lo}?", True), (f"Is {lo} greater than {hi}?", False)))
        elif form == 2:
            x, y = rng.choice(ANIMALS), rng.choice(THINGS)
            out.append(((f"Is {_article(x)} {x} an animal?", True), (f"Is {_article(y)} {y} an animal?", False)))
        else:
            x, y = rng.choice(FRUITS), rng.choice(COLOURS)
            out.append(((f"Is {_article(x)} {x} a fruit?", True), (f"Is {y} a fruit?", False)))
    return out


def frequency_gaps(pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Per (positive, negative) pair: Zipf(negative) - Zipf(positive) (wordfreq, lower case; > 0: the negative
    word is the more frequent one)."""
    from .words import zipf

    return [zipf(neg) - zipf(pos) for pos, neg in pairs]


def answer_ids(tokenizer: Any, pos: str = "Yes", neg: str = "No") -> tuple[int, int]:
    """The tokens an answer is read from: the first tokens of ``" pos"`` and ``" neg"`` (one token each
    for Yes/No in every real tokenizer here), or of ``"pos"``/``"neg"`` when the spaced forms share their
    first token (a small-vocabulary tokenizer). InputError when neither form differs."""
    for a, b in ((" " + pos, " " + neg), (pos, neg)):
        ya, na = (list(tokenizer.encode(w, add_special_tokens=False)) for w in (a, b))
        if ya and na and ya[0] != na[0]:
            return int(ya[0]), int(na[0])
    raise InputError(f"the tokenizer gives {pos!r} and {neg!r} the same first token; the answer cannot be read")


def yesno_batch(tokenizer: Any, n_groups: int, *, seed: int,
                pairs: tuple[tuple[str, str], ...] = OPTION_PAIRS, first_pair_groups: int | None = None) -> YesNoBatch:
    """Per answer-word pair, ``n_groups`` groups (a true and a false item; ``first_pair_groups`` for the
    first pair, Yes/No, when given), each item in both answer orders: ``4 * n_groups`` prompts per usable
    pair. Pairs whose words share their first token are dropped (``dropped``); InputError when none is left."""
    if n_groups < 1:
        raise InputError("yesno_batch needs at least one group")

    def enc(text: str) -> list[int]:
        return encode(tokenizer, text)

    bos = bos_id(tokenizer)
    head = [bos] if bos is not None else []
    usable, dropped, ans = [], [], []
    for pos_w, neg_w in pairs:
        if len(enc(" " + pos_w)) != len(enc(" " + neg_w)):   # token-count matched words only
            dropped.append((pos_w, neg_w))
            continue
        try:
            ans.append(answer_ids(tokenizer, pos_w, neg_w))
            usable.append((pos_w, neg_w))
        except InputError:
            dropped.append((pos_w, neg_w))
    if not usable:
        raise InputError("the tokenizer gives every answer-word pair (Yes/No, True/False, ...) the same first token")
    counts = [n_groups] * len(usable)
    if first_pair_groups is not None and usable and usable[0] == pairs[0]:
        counts[0] = max(1, int(first_pair_groups))
    owner = [k for k, c in enumerate(counts) for _ in range(c)]
    groups = question_groups(len(owner), seed=seed)
    w_or, w_ans, w_dot = enc(" or"), enc("Answer"), enc(".")
    rows, spans, qs, truth, item, group, pair, nf, questions, yid, nid = ([] for _ in range(11))
    for g, qpair in enumerate(groups):
        k_pair = owner[g]
        pos_w, neg_w = usable[k_pair]
        w_yes, w_no = enc(" " + pos_w), enc(" " + neg_w)
        for k, (q, t) in enumerate(qpair):
            for no_first in (False, True):
                first, second = (w_no, w_yes) if no_first else (w_yes, w_no)
                prefix = head + w_ans + first + w_or + second + w_dot
                p1 = len(head) + len(w_ans)
                p2 = p1 + len(first) + len(w_or)
                rows.append(prefix + enc(f"\nQuestion: {q}\nAnswer:"))
                y0, n0 = (p2, p1) if no_first else (p1, p2)
                spans.append(((y0, y0 + len(w_yes)), (n0, n0 + len(w_no))))
                qs.append(len(prefix))
                truth.append(t)
                item.append(2 * g + k)
                group.append(g)
                pair.append(k_pair)
                nf.append(no_first)
                questions.append(q)
                yid.append(ans[k_pair][0])
                nid.append(ans[k_pair][1])
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id(tokenizer), dtype=torch.long)
    ym = torch.zeros(len(rows), n, dtype=torch.bool)
    nm = torch.zeros_like(ym)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        (a, b), (c, d) = spans[i]
        ym[i, a:b] = True
        nm[i, c:d] = True
    return YesNoBatch(ids=ids, last=torch.tensor([len(r) - 1 for r in rows]), q_start=torch.tensor(qs), yes_mask=ym,
                      no_mask=nm, yes_id=torch.tensor(yid), no_id=torch.tensor(nid), truth=torch.tensor(truth),
                      item=torch.tensor(item), group=torch.tensor(group), pair=torch.tensor(pair),
                      no_first=torch.tensor(nf), pairs=usable, questions=questions, dropped=dropped)
