"""Build the shipped WordNet knowledge graphs: ``python -m kcs_tl.data.build_wordnet``.

Reads the WordNet 3.0 noun files (Debian package ``wordnet-base``, under
``/usr/share/wordnet``) without nltk and writes into ``kcs_tl/data/wordnet/``:

- one TargetKG per root of Bayazit et al. (``<root>.jsonl``): hyponym edges
  breadth-first under the root to ``MAX_DEPTH`` levels, hyponyms attested
  in SemCor only (``cntlist.rev``), each level's edges in order of
  decreasing SemCor frequency of the hyponym, capped at ``CAP``;
- ``control.jsonl``: ``N_CONTROL`` IsA edges sampled with a fixed seed from
  synsets outside every root's full hyponym tree, sharing no entity string
  with any shipped target.

A triplet is ``(hyponym lemma, "IsA", hypernym lemma)``, a synset's lemma
being its first word with underscores turned to spaces; only class
hypernyms (``@``) count, not instance ones.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

from kcs_tl.data.kg import KnowledgeGraph, Triplet
from kcs_tl.data.splits import check_disjoint
from kcs_tl.data.templates import split_templates
from kcs_tl.data.wordnet import DATA_DIR, ISA_TEMPLATES, WORDNET_ROOTS
from kcs_tl.validate import InputValueError

MAX_DEPTH = 3
CAP = 40
N_CONTROL = 300
SEED = 0


@dataclass
class Synset:
    offset: str
    lex_filenum: int
    words: list[tuple[str, int]]  # (word, lex_id)
    hypernyms: list[str]
    count: int = 0  # SemCor tag count, summed over its words

    @property
    def lemma(self) -> str:
        return self.words[0][0].replace("_", " ")


def read_nouns(wordnet_dir: Path) -> dict[str, Synset]:
    """Noun synsets by offset, with SemCor counts from ``cntlist.rev``."""
    synsets: dict[str, Synset] = {}
    with open(wordnet_dir / "data.noun", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # licence header
                continue
            fields = line.split(" | ")[0].split()
            n_words = int(fields[3], 16)
            words = [(fields[4 + 2 * i], int(fields[5 + 2 * i], 16)) for i in range(n_words)]
            at = 4 + 2 * n_words
            pointers = [fields[at + 1 + 4 * i : at + 5 + 4 * i] for i in range(int(fields[at]))]
            hypernyms = [off for sym, off, pos, _ in pointers if sym == "@" and pos == "n"]
            synsets[fields[0]] = Synset(fields[0], int(fields[1]), words, hypernyms)
    counts: dict[str, int] = {}
    with open(wordnet_dir / "cntlist.rev", encoding="utf-8") as f:
        for line in f:
            key, _, count = line.split()
            counts[key] = int(count)
    for s in synsets.values():
        s.count = sum(counts.get(f"{w.lower()}%1:{s.lex_filenum:02d}:{lex_id:02d}::", 0) for w, lex_id in s.words)
    return synsets


def synset_by_name(wordnet_dir: Path, name: str) -> str:
    """Offset of a synset named like ``location.n.01`` (the lemma's n-th sense in index.noun)."""
    lemma, pos, sense = name.rsplit(".", 2)
    with open(wordnet_dir / "index.noun", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[0] == lemma and pos == "n":
                return fields[-int(fields[2]) :][int(sense) - 1]
    raise InputValueError(f"no noun synset {name!r} in {wordnet_dir}")


def children_of(synsets: dict[str, Synset]) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {}
    for s in synsets.values():
        for parent in s.hypernyms:
            children.setdefault(parent, []).append(s.offset)
    return children


def target_triplets(synsets: dict[str, Synset], children: dict[str, list[str]], root: str) -> list[Triplet]:
    """Breadth-first hyponym edges under ``root``, most frequent first per level, capped.

    Only hyponyms attested in SemCor are taken, so the facts are about words
    a language model has plausibly seen.
    """
    out: list[Triplet] = []
    seen = {root}
    level = [root]
    for _ in range(MAX_DEPTH):
        edges = [(synsets[c], synsets[p]) for p in level for c in children.get(p, []) if synsets[c].count > 0]
        edges.sort(key=lambda e: (-e[0].count, e[0].lemma, e[1].lemma))
        level = []
        for child, parent in edges:
            t = Triplet(child.lemma, "IsA", parent.lemma)
            if len(out) == CAP:
                return out
            if t.head == t.tail or t.head == synsets[root].lemma or t in out:
                continue
            out.append(t)
            if child.offset not in seen:
                seen.add(child.offset)
                level.append(child.offset)
    return out


def descendants(children: dict[str, list[str]], root: str) -> set[str]:
    found, stack = {root}, [root]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in found:
                found.add(c)
                stack.append(c)
    return found


def control_triplets(synsets: dict[str, Synset], excluded: set[str], entities: set[str]) -> list[Triplet]:
    """``N_CONTROL`` IsA edges between attested (SemCor) synsets outside ``excluded``."""
    candidates = sorted({
        Triplet(s.lemma, "IsA", synsets[p].lemma)
        for s in synsets.values() if s.offset not in excluded and s.count > 0
        for p in s.hypernyms if synsets[p].count > 0
    }, key=lambda t: (t.head, t.tail))
    candidates = [t for t in candidates
                  if t.head != t.tail and t.head not in entities and t.tail not in entities]
    return sorted(random.Random(SEED).sample(candidates, N_CONTROL), key=lambda t: (t.head, t.tail))


def build(wordnet_dir: Path, out_dir: Path) -> None:
    synsets = read_nouns(wordnet_dir)
    children = children_of(synsets)
    train, held_out = split_templates({"IsA": ISA_TEMPLATES}, n_held_out=1, seed=SEED)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets, excluded = [], set()
    for name in WORDNET_ROOTS:
        root = synset_by_name(wordnet_dir, name)
        kg = KnowledgeGraph(target_triplets(synsets, children, root), train, held_out, name)
        kg.save(out_dir / f"{name}.jsonl")
        targets.append(kg)
        excluded |= descendants(children, root)
        print(f"{name}: {len(kg)} triplets, e.g. {kg[0]}")
    entities = {e for kg in targets for e in kg.heads + kg.tails}
    control = KnowledgeGraph(control_triplets(synsets, excluded, entities), train, held_out, "control")
    for kg in targets:
        check_disjoint(kg, control, by_head=True)
    control.save(out_dir / "control.jsonl")
    print(f"control: {len(control)} triplets, e.g. {control[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args()
    build(args.wordnet_dir, args.out_dir)


if __name__ == "__main__":
    main()
