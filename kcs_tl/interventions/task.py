"""What an intervention should do: prompts, the token contrast at their last position, and other text.

An ``InterventionTask`` holds search prompts and held-out test prompts
(``Prompts``: token ids, the position to read, and a token pair per prompt),
the kind of change wanted, and LM blocks whose next-token distributions must
stay as they were (the "no other discernible role" term):

- ``"flip"``: make the model prefer ``b`` (the verb form it currently rejects)
  over ``a`` (the one it prefers);
- ``"neutralise"``: make P(a) = P(b) (e.g. P(she) = P(he));
- ``"push_up"`` / ``"push_down"``: raise / lower P(a).

Built from the built-in probes (``agreement_task``, ``gender_task``) or from
your own prompts and token pairs (``prompt_task``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from kcs_tl import validate
from kcs_tl.data.lm import lm_blocks
from kcs_tl.validate import InputTypeError, InputValueError

KINDS = ("flip", "neutralise", "push_up", "push_down")
EFFECT_NAMES = {"flip": "accuracy", "neutralise": "gap", "push_up": "prob", "push_down": "prob"}
"""The effect each kind is measured by: how often ``a`` still beats ``b``; mean |P(a) - P(b)|; mean P(a)."""


@dataclass
class Prompts:
    """Prompts as right-padded token ids, the position read in each row, and its token pair."""

    tokens: Int[Tensor, "n pos"]
    positions: Int[Tensor, "n"]
    a: Int[Tensor, "n"]
    b: Int[Tensor, "n"]
    text: list[str]

    def __len__(self) -> int:
        return len(self.text)

    def __getitem__(self, rows) -> "Prompts":
        idx = torch.arange(len(self))[rows]
        width = int(self.positions[idx].max()) + 1
        return Prompts(self.tokens[idx, :width], self.positions[idx], self.a[idx], self.b[idx],
                       [self.text[i] for i in idx.tolist()])

    def to(self, device) -> "Prompts":
        return Prompts(self.tokens.to(device), self.positions.to(device), self.a.to(device),
                       self.b.to(device), self.text)

    def read(self, logits: Float[Tensor, "n pos vocab"]) -> Float[Tensor, "n vocab"]:
        """The logits at each row's read position."""
        return logits[torch.arange(len(self), device=logits.device), self.positions]


def token_id(model, word: str, name: str = "token") -> int:
    """The single token id of ``word`` (a leading space is added when missing)."""
    if not isinstance(word, str) or not word.strip():
        raise InputValueError(f"{name} must be a non-empty word, got {validate.given(word)}")
    text = word if word.startswith(" ") else " " + word
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        raise InputValueError(f"{name} {word!r} is {len(ids)} tokens for this tokenizer ({model.to_str_tokens(text, prepend_bos=False)}); "
                              "give words that are one token each")
    return ids[0]


def encode_prompts(model, prompts: Sequence[str], pairs: Sequence[tuple[str, str]], name: str = "prompts") -> Prompts:
    """Tokenise ``prompts`` (BOS as the model prepends it) with one ``(a, b)`` word pair per prompt."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise InputTypeError(f"{name} must be a non-empty list of strings, got {validate.given(prompts)}")
    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(w, str) for w in pairs):
        pairs = [pairs] * len(prompts)
    if not isinstance(pairs, Sequence) or len(pairs) != len(prompts):
        raise InputValueError(f"{name}: give one (a, b) word pair, or one pair per prompt "
                              f"({len(prompts)} prompts), got {validate.given(pairs)}")
    rows, a, b = [], [], []
    for i, (text, pair) in enumerate(zip(prompts, pairs)):
        if not isinstance(text, str) or not text.strip():
            raise InputValueError(f"{name}[{i}] must be a non-empty string, got {validate.given(text)}")
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise InputValueError(f"{name}: pair {i} must be (a, b) words, got {validate.given(pair)}")
        rows.append(model.to_tokens(text)[0])
        a.append(token_id(model, pair[0], f"{name} pair {i} a"))
        b.append(token_id(model, pair[1], f"{name} pair {i} b"))
    lengths = torch.tensor([len(r) for r in rows])
    tokens = torch.full((len(rows), int(lengths.max())), model.tokenizer.pad_token_id or 0, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    validate.tokens(name, tokens, model, rows=list(prompts), lengths=lengths)
    return Prompts(tokens, lengths - 1, torch.tensor(a), torch.tensor(b), list(prompts))


@dataclass
class InterventionTask:
    """Search prompts, held-out test prompts, the wanted change, and LM blocks to keep.

    ``lm`` blocks serve the KL term during the search; ``lm_test`` (never
    searched on) measure perplexity and KL damage afterwards.
    """

    name: str
    kind: str
    train: Prompts
    test: Prompts
    lm: Int[Tensor, "n block"]
    lm_test: Int[Tensor, "n block"]

    def __post_init__(self):
        validate.choice("kind", self.kind, KINDS)

    @property
    def effect_name(self) -> str:
        return EFFECT_NAMES[self.kind]

    def loss(self, logits: Float[Tensor, "n vocab"], prompts: Prompts) -> Tensor:
        """What the search minimises at the read positions (mean over prompts)."""
        lp = logits.float().log_softmax(-1)
        la, lb = lp.gather(-1, prompts.a[:, None])[:, 0], lp.gather(-1, prompts.b[:, None])[:, 0]
        if self.kind == "flip":
            return F.softplus(la - lb).mean()  # -log P(b wins the pair)
        if self.kind == "neutralise":
            return ((la - lb) ** 2).mean()  # no reward for killing both tokens
        if self.kind == "push_up":
            return -la.mean()
        return -torch.log1p(-la.exp().clamp(max=1 - 1e-6)).mean()

    def objective(self, logits: Float[Tensor, "n vocab"], prompts: Prompts, sign: Tensor | None = None) -> Tensor:
        """The quantity an intervention should lower, summed over prompts (attribution target).

        ``flip``: logit(a) - logit(b); ``neutralise``: the log-ratio in the
        direction the original model leans (``sign``); ``push_up``: -log P(a);
        ``push_down``: log P(a).
        """
        lp = logits.float().log_softmax(-1)
        la, lb = lp.gather(-1, prompts.a[:, None])[:, 0], lp.gather(-1, prompts.b[:, None])[:, 0]
        if self.kind == "flip":
            return (la - lb).sum()
        if self.kind == "neutralise":
            return ((la - lb) * (sign if sign is not None else torch.sign(la - lb).detach())).sum()
        return (-la if self.kind == "push_up" else la).sum()

    @torch.no_grad()
    def effect(self, logits: Float[Tensor, "n vocab"], prompts: Prompts) -> float:
        """The measured effect (``effect_name``) over ``prompts``."""
        p = logits.float().softmax(-1)
        pa, pb = p.gather(-1, prompts.a[:, None])[:, 0], p.gather(-1, prompts.b[:, None])[:, 0]
        if self.kind == "flip":
            return (pa > pb).float().mean().item()
        if self.kind == "neutralise":
            return (pa - pb).abs().mean().item()
        return pa.mean().item()


def _blocks(zoo_model, n_blocks: int):
    z, n_ctx = zoo_model, zoo_model.model.cfg.n_ctx
    return (lm_blocks(z.lm_text["train"], z.tokenizer, n_ctx, max_blocks=n_blocks),
            lm_blocks(z.lm_text["validation"], z.tokenizer, n_ctx, max_blocks=n_blocks))


def _cut_before(sentence: str, words: set[str]) -> tuple[str, str] | None:
    """The prefix of ``sentence`` up to the first of ``words``, and that word."""
    for m in re.finditer(r"\S+", sentence):
        if m.group(0) in words:
            return sentence[: m.start()].rstrip(), m.group(0)
    return None


def agreement_task(zoo_model, n_train: int = 400, n_blocks: int = 64) -> InterventionTask:
    """Flip subject-verb number agreement on the built-in world.

    Searched on prefixes cut from the model's own agreement training sentences;
    tested on ``z.agreement_test`` (400 prefixes with attractors and noun pairs
    never seen in training). ``a`` is the correct verb form, ``b`` the other.
    """
    n_train = validate.integer("n_train", n_train, 1)
    z, model = zoo_model, zoo_model.model
    forms = {}
    for it in z.agreement_test:
        forms[it.singular_verb], forms[it.plural_verb] = it.plural_verb, it.singular_verb
    prefixes, pairs, seen = [], [], set()
    for sentence in z.agreement_train:
        cut = _cut_before(sentence, set(forms))
        if cut is not None and cut not in seen:
            seen.add(cut)
            prefixes.append(cut[0])
            pairs.append((cut[1], forms[cut[1]]))
        if len(prefixes) == n_train:
            break
    test = encode_prompts(model, [it.prefix for it in z.agreement_test],
                          [(it.correct, it.wrong) for it in z.agreement_test], "agreement_test")
    lm, lm_test = _blocks(z, n_blocks)
    return InterventionTask("agreement", "flip", encode_prompts(model, prefixes, pairs, "agreement_train"),
                            test, lm, lm_test)


def gender_task(zoo_model, n_blocks: int = 64, held_out: Sequence[str] = ()) -> InterventionTask:
    """Neutralise P(she) vs P(he) after the profession prompts of the built-in world.

    Searched on the distinct prefixes of the gender training sentences (cut
    before the pronoun); tested on ``z.gender_test`` (16 professions x 5
    prompts, the same prompts as the search's). ``held_out`` professions are
    kept out of the search, and the test is then their prompts only: does the
    intervention carry over to professions it never saw?
    """
    z, model = zoo_model, zoo_model.model
    professions = sorted({it.profession for it in z.gender_test})
    held_out = validate.names("held_out", held_out, professions)
    if len(held_out) == len(professions):
        raise InputValueError("held_out names every profession; leave some to search on")
    prefixes = sorted({cut[0] for s in z.gender_train if (cut := _cut_before(s, {"he", "she"}))
                       and cut[0].split()[1] not in held_out})
    test_prefixes = [it.prefix for it in z.gender_test if not held_out or it.profession in held_out]
    lm, lm_test = _blocks(z, n_blocks)
    return InterventionTask("gender", "neutralise", encode_prompts(model, prefixes, ("she", "he"), "gender_train"),
                            encode_prompts(model, test_prefixes, ("she", "he"), "gender_test"), lm, lm_test)


def prompt_task(model, kind: str, prompts: Sequence[str], pairs, lm: Int[Tensor, "n block"], *,
                test_prompts: Sequence[str] | None = None, test_pairs=None,
                lm_test: Int[Tensor, "n block"] | None = None, name: str = "custom") -> InterventionTask:
    """A task from your own prompts: ``pairs`` is one ``(a, b)`` word pair or one per prompt.

    For ``push_up`` / ``push_down`` give ``(word, word)``. Without test prompts
    the search prompts are also the test prompts; without ``lm_test`` the
    ``lm`` blocks are reused (say so when you report).
    """
    validate.choice("kind", kind, KINDS)
    lm = validate.tokens("lm", lm, model)
    train = encode_prompts(model, prompts, pairs, "prompts")
    test = (train if test_prompts is None else
            encode_prompts(model, test_prompts, pairs if test_pairs is None else test_pairs, "test_prompts"))
    lm_test = lm if lm_test is None else validate.tokens("lm_test", lm_test, model)
    return InterventionTask(name, kind, train, test, lm, lm_test)
