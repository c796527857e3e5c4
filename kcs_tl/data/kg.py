"""Knowledge graphs: (head, relation, tail) triplets plus the templates that verbalise them.

A ``KnowledgeGraph`` is the unit the search works on: the TargetKG whose facts
a subnetwork must carry, the ControlKG whose facts it must leave alone.

File format (JSON Lines, one JSON object per line, ``"type"`` says which)::

    {"type": "graph", "format": "kcs_tl.kg/1", "name": "location.n.01"}
    {"type": "template", "relation": "IsA", "template": "A {head} is a type of {tail}", "held_out": false}
    {"type": "template", "relation": "IsA", "template": "A {head} is a kind of {tail}", "held_out": true}
    {"type": "triplet", "head": "space", "relation": "IsA", "tail": "location"}

The ``graph`` record comes first and exactly once; templates keep their
order within a relation; triplets keep theirs.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import pandas as pd

from kcs_tl.data.templates import check_templates
from kcs_tl.files import read_text
from kcs_tl.validate import InputTypeError, InputValueError

FORMAT = "kcs_tl.kg/1"


@dataclass(frozen=True)
class Triplet:
    """One fact: ``head --relation--> tail``, e.g. ``Triplet("space", "IsA", "location")``."""

    head: str
    relation: str
    tail: str

    def __post_init__(self) -> None:
        for field in ("head", "relation", "tail"):
            value = getattr(self, field)
            if not isinstance(value, str):
                raise InputTypeError(f"Triplet.{field} must be a str, got {value!r}")
            if not value.strip() or value != value.strip():
                raise InputValueError(
                    f"Triplet.{field} must be non-empty with no leading/trailing whitespace, got {value!r}"
                )


def _as_triplet(item: object) -> Triplet:
    if isinstance(item, Triplet):
        return item
    if isinstance(item, (tuple, list)) and len(item) == 3:
        return Triplet(*item)
    raise InputTypeError(f"expected a Triplet or a (head, relation, tail) tuple, got {item!r}")


class KnowledgeGraph:
    """An ordered set of triplets with training and held-out templates per relation.

    ``templates`` maps each relation to the sentence templates used for
    training; ``held_out_templates`` maps relations to paraphrases kept out of
    training. Every relation used by a triplet needs at least one training
    template. Triplets are unique; their order is kept (it is the row order
    of ``encode``).
    """

    def __init__(
        self,
        triplets: Sequence[Triplet],
        templates: dict[str, list[str]],
        held_out_templates: dict[str, list[str]] | None = None,
        name: str = "",
    ) -> None:
        if not isinstance(name, str):
            raise InputTypeError(f"name must be a str, got {name!r}")
        label = f"knowledge graph {name!r}" if name else "knowledge graph"
        self.triplets: tuple[Triplet, ...] = tuple(_as_triplet(t) for t in triplets)
        if not self.triplets:
            raise InputValueError(f"{label} has no triplets")
        seen: set[Triplet] = set()
        for t in self.triplets:
            if t in seen:
                raise InputValueError(f"{label} lists triplet {t} twice")
            seen.add(t)
        self.templates = check_templates(templates, "templates")
        self.held_out_templates = check_templates(held_out_templates or {}, "held_out_templates")
        for relation, temps in self.held_out_templates.items():
            leaked = [t for t in temps if t in self.templates.get(relation, [])]
            if leaked:
                raise InputValueError(f"held-out template(s) {leaked} of {relation!r} are also training templates")
        missing = [r for r in self.relations if r not in self.templates]
        if missing:
            example = next(t for t in self.triplets if t.relation == missing[0])
            raise InputValueError(
                f"{label}: relation(s) {missing} have no template (e.g. triplet {example}); "
                f"templates are given for {sorted(self.templates)}"
            )
        self.name = name
        self._index = {t: i for i, t in enumerate(self.triplets)}

    # -- container protocol -------------------------------------------------
    def __len__(self) -> int:
        return len(self.triplets)

    def __iter__(self) -> Iterator[Triplet]:
        return iter(self.triplets)

    def __getitem__(self, i: int) -> Triplet:
        return self.triplets[i]

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KnowledgeGraph):
            return NotImplemented
        return (self.triplets, self.templates, self.held_out_templates, self.name) == (
            other.triplets, other.templates, other.held_out_templates, other.name
        )

    def index(self, triplet: Triplet) -> int:
        """Position of ``triplet`` in the graph."""
        if triplet not in self._index:
            raise InputValueError(f"triplet {triplet} is not in {self!r}")
        return self._index[triplet]

    # -- views ----------------------------------------------------------------
    @property
    def relations(self) -> tuple[str, ...]:
        """Relations used by the triplets, in order of first use."""
        return tuple(dict.fromkeys(t.relation for t in self.triplets))

    @property
    def heads(self) -> tuple[str, ...]:
        """Head entities, in order of first use."""
        return tuple(dict.fromkeys(t.head for t in self.triplets))

    @property
    def tails(self) -> tuple[str, ...]:
        """Tail entities, in order of first use."""
        return tuple(dict.fromkeys(t.tail for t in self.triplets))

    def to_frame(self) -> pd.DataFrame:
        """The triplets as a DataFrame with columns ``head, relation, tail``."""
        return pd.DataFrame([(t.head, t.relation, t.tail) for t in self.triplets],
                            columns=["head", "relation", "tail"])

    # -- derived graphs --------------------------------------------------------
    def subset(self, triplets: Iterable[Triplet], name: str | None = None) -> KnowledgeGraph:
        """A graph of some of these triplets (all must be in this graph), same templates."""
        chosen = [_as_triplet(t) for t in triplets]
        absent = [t for t in chosen if t not in self._index]
        if absent:
            raise InputValueError(f"{len(absent)} triplet(s) are not in {self!r}, e.g. {absent[:3]}")
        return KnowledgeGraph(chosen, self.templates, self.held_out_templates,
                              self.name if name is None else name)

    def filter(self, keep: Callable[[Triplet], bool], name: str | None = None) -> KnowledgeGraph:
        """The triplets for which ``keep(triplet)`` is true, same templates."""
        return self.subset([t for t in self.triplets if keep(t)], name)

    def with_templates(self, templates: dict[str, list[str]],
                       held_out_templates: dict[str, list[str]] | None = None) -> KnowledgeGraph:
        """The same triplets with other training and held-out templates (same checks as a new graph)."""
        return KnowledgeGraph(self.triplets, templates, held_out_templates, self.name)

    # -- files -----------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the graph as JSON Lines (format in the module docstring)."""
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in self._records())

    def _records(self) -> Iterator[dict]:
        yield {"type": "graph", "format": FORMAT, "name": self.name}
        for held_out, table in ((False, self.templates), (True, self.held_out_templates)):
            for relation, temps in table.items():
                for template in temps:
                    yield {"type": "template", "relation": relation, "template": template, "held_out": held_out}
        for t in self.triplets:
            yield {"type": "triplet", "head": t.head, "relation": t.relation, "tail": t.tail}

    @classmethod
    def load(cls, path: str | os.PathLike) -> KnowledgeGraph:
        """Read a graph written by ``save``; errors name the file and line."""
        text = read_text(path, f"a knowledge graph in {FORMAT} JSON Lines (KnowledgeGraph.save)")
        lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
        return cls._from_records(lines, str(path))

    @classmethod
    def _from_records(cls, lines: list[tuple[int, str]], source: str) -> KnowledgeGraph:
        header: dict | None = None
        tables: dict[bool, dict[str, list[str]]] = {False: {}, True: {}}
        triplets: list[Triplet] = []
        for n, line in lines:
            where = f"{source}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputValueError(f"{where}: not JSON ({err})") from None
            kind = record.get("type") if isinstance(record, dict) else None
            if (kind == "graph") != (header is None):
                raise InputValueError(f"{where}: the file must start with exactly one 'graph' record")
            try:
                if kind == "graph":
                    if record["format"] != FORMAT:
                        raise InputValueError(f"unknown format {record['format']!r}, expected {FORMAT!r}")
                    header = record
                elif kind == "template":
                    if not isinstance(record["held_out"], bool):
                        raise InputValueError(f"'held_out' must be true or false, got {record['held_out']!r}")
                    tables[record["held_out"]].setdefault(record["relation"], []).append(record["template"])
                elif kind == "triplet":
                    triplets.append(Triplet(record["head"], record["relation"], record["tail"]))
                else:
                    raise InputValueError(f"unknown record type {kind!r}; valid: 'graph', 'template', 'triplet'")
            except KeyError as err:
                raise InputValueError(f"{where}: {kind!r} record lacks field {err}") from None
            except (TypeError, ValueError) as err:
                raise InputValueError(f"{where}: {err}") from None
        if header is None:
            raise InputValueError(f"{source}: empty file, no 'graph' record")
        return cls(triplets, tables[False], tables[True], header.get("name", ""))

    # -- display ---------------------------------------------------------------
    def __repr__(self) -> str:
        name = f"{self.name!r}, " if self.name else ""
        return (f"KnowledgeGraph({name}{len(self)} triplets, {len(self.heads)} heads, "
                f"relations={list(self.relations)})")

    def _repr_html_(self, max_rows: int = 20) -> str:
        frame = self.to_frame()
        table = frame.head(max_rows).to_html(index=False, escape=True)
        more = f"<p>... {len(frame) - max_rows} more</p>" if len(frame) > max_rows else ""
        templates = "".join(
            f"<li><b>{html.escape(r)}</b>: {html.escape(' | '.join(ts))}"
            f"{' (held out: ' + html.escape(' | '.join(self.held_out_templates[r])) + ')' if r in self.held_out_templates else ''}</li>"
            for r, ts in self.templates.items()
        )
        return f"<p><code>{html.escape(repr(self))}</code></p><ul>{templates}</ul>{table}{more}"
