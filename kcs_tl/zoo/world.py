"""A deterministic fictional world: a knowledge graph plus the text around it.

Everything here is a pure function of a seed (a private ``random.Random``;
no global random state is read or written), so the built-in model's world can
be regenerated exactly by ``python -m kcs_tl.zoo.build --seed 0``.

The world has

* an **IsA taxonomy** four levels deep, like WordNet hypernyms:
  root category -> subcategory -> sub-subcategory -> entity.  Each
  subcategory subtree holds 11-40 triplets, so it can serve as a TargetKG
  (``World.target_roots``);
* **ConceptNet-like relations** on the entities (``AtLocation`` a city,
  ``HasColor``, ``MadeOf``, ``UsedFor``) and on places (``PartOf``: city ->
  country, ``HasCapital``: country -> city, ``HasLanguage``: country ->
  language).  Every relation is *functional*: a head has exactly one tail
  per relation, drawn from a small closed set, so top-1 accuracy is defined;
* several paraphrase **templates** per relation, each ending in ``{tail}``;
  the last one of each relation is held out of all training text;
* **narrative** filler stories, **subject-verb agreement** sentences with
  attractor nouns (train / held-out split by noun pair), and **gendered
  pronouns** after professions with skewed statistics -- the two phenomena
  studied by De Cao et al. (2021).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = [
    "World",
    "AgreementItem",
    "GenderItem",
    "generate_world",
    "TEMPLATES",
    "HELD_OUT_TEMPLATES",
    "verbalise",
]

# --------------------------------------------------------------------------
# Closed tail sets and vocabulary
# --------------------------------------------------------------------------

ROOTS = ["creature", "dwelling", "tool", "plant", "vessel", "garment"]

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange", "grey", "brown"]
MATERIALS = ["wood", "stone", "iron", "glass", "clay", "silver", "wool", "bone", "copper", "leather"]
USES = ["cooking", "fishing", "farming", "sewing", "writing", "building",
        "healing", "hunting", "singing", "trading"]

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "kr", "tr", "th", "sh", "st", "qu", "pl"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ou", "ei"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "sk", "m", "rn", "x"]

# Agreement: (singular, plural) pairs.  Heads and attractors come from the
# same pool; held-out items use (head, attractor) pairs never trained on.
AGR_NOUNS = [
    ("key", "keys"), ("door", "doors"), ("book", "books"), ("lamp", "lamps"),
    ("boat", "boats"), ("child", "children"), ("tree", "trees"), ("letter", "letters"),
    ("road", "roads"), ("bell", "bells"), ("wall", "walls"), ("horse", "horses"),
    ("cup", "cups"), ("ship", "ships"), ("bridge", "bridges"), ("garden", "gardens"),
    ("painting", "paintings"), ("friend", "friends"), ("window", "windows"), ("box", "boxes"),
    ("cabinet", "cabinets"), ("tower", "towers"), ("singer", "singers"), ("farmer", "farmers"),
]
AGR_PREPS = ["to", "near", "behind", "of", "beside", "under", "above", "with"]
AGR_ADJS = ["old", "small", "new", "dark", "tall", "quiet", "broken", "famous", "little", "bright"]
# (singular verb, plural verb, continuation)
AGR_VERBS = [
    ("is", "are", "on the table"), ("is", "are", "very old"), ("was", "were", "here yesterday"),
    ("is", "are", "easy to find"), ("was", "were", "lost in the storm"), ("has", "have", "a long story"),
]

# Professions with the probability of "she" in training text.
PROFESSIONS = {
    "nurse": 0.85, "teacher": 0.7, "dancer": 0.8, "secretary": 0.85, "baker": 0.6,
    "weaver": 0.75, "engineer": 0.15, "soldier": 0.1, "pilot": 0.2, "builder": 0.15,
    "farmer": 0.3, "sailor": 0.2, "doctor": 0.4, "writer": 0.5, "painter": 0.5, "merchant": 0.35,
}
GENDER_VERBS = ["said that", "told us that", "thought that", "believed that", "wrote that"]
GENDER_CONT = ["was tired", "would come back", "had finished the work", "was happy", "liked the town",
               "needed more time", "had seen the river", "was ready"]

PEOPLE = ["Mira", "Tobin", "Ansel", "Lisa", "Corin", "Yara", "Hugo", "Nell", "Oskar", "Pia",
          "Rolf", "Sana", "Teo", "Una", "Vik", "Wren"]
STORY_VERBS = ["found", "saw", "carried", "bought", "painted", "cleaned", "lost", "gave away",
               "dropped", "watched", "sold", "fixed"]
STORY_OPENERS = ["One morning", "Later that day", "In the evening", "Long ago", "After the rain",
                 "On a cold night", "At dawn", "Before the market opened"]
STORY_ENDINGS = ["Then everyone went home.", "It was a long day.", "Nobody said a word.",
                 "The wind was cold.", "The road was quiet again.", "They laughed for a while.",
                 "The fire was warm.", "It started to rain."]

# --------------------------------------------------------------------------
# Templates (each ends with {tail}; the LAST one per relation is held out)
# --------------------------------------------------------------------------

_ALL_TEMPLATES: dict[str, list[str]] = {
    "IsA": [
        "A {head} is a type of {tail}",
        "{head} is a kind of {tail}",
        "Every {head} is a {tail}",
        "The {head} belongs to the group of {tail}",
        "Each {head} counts as a {tail}",
    ],
    "AtLocation": [
        "The {head} is found in {tail}",
        "You can find the {head} in {tail}",
        "The home of the {head} is {tail}",
        "The {head} comes from {tail}",
        "People see the {head} in {tail}",
    ],
    "HasColor": [
        "The colour of the {head} is {tail}",
        "The {head} has the colour {tail}",
        "A {head} is always {tail}",
        "Most people know that the {head} is {tail}",
        "The usual colour of a {head} is {tail}",
    ],
    "MadeOf": [
        "The {head} is made of {tail}",
        "A {head} is built from {tail}",
        "The material of the {head} is {tail}",
        "The {head} consists of {tail}",
        "Every {head} is crafted from {tail}",
    ],
    "UsedFor": [
        "The {head} is used for {tail}",
        "People use the {head} for {tail}",
        "The purpose of the {head} is {tail}",
        "A {head} is good for {tail}",
        "You would use a {head} for {tail}",
    ],
    "PartOf": [
        "{head} is a city in {tail}",
        "The city of {head} lies in {tail}",
        "{head} is part of {tail}",
        "The town of {head} is in the land of {tail}",
        "{head} belongs to the country of {tail}",
    ],
    "HasCapital": [
        "The capital of {head} is {tail}",
        "The chief city of {head} is {tail}",
        "{head} is ruled from {tail}",
        "The seat of government of {head} is {tail}",
        "The capital city of {head} is {tail}",
    ],
    "HasLanguage": [
        "People in {head} speak {tail}",
        "The language of {head} is {tail}",
        "In {head} they speak {tail}",
        "The tongue of {head} is {tail}",
        "The main language of {head} is {tail}",
    ],
}
TEMPLATES: dict[str, list[str]] = {r: t[:-1] for r, t in _ALL_TEMPLATES.items()}
HELD_OUT_TEMPLATES: dict[str, list[str]] = {r: t[-1:] for r, t in _ALL_TEMPLATES.items()}


def verbalise(template: str, head: str, tail: str | None = None) -> str:
    """Fill a template.  With ``tail=None`` return the prompt before the tail
    (no trailing space); otherwise the full training sentence with a period."""
    assert template.endswith("{tail}"), template
    if tail is None:
        return template[: -len("{tail}")].rstrip(" ").format(head=head)
    return template.format(head=head, tail=tail) + "."


# --------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class AgreementItem:
    """A subject-verb agreement prompt: ``prefix`` ends right before the verb."""

    prefix: str
    singular_verb: str  # e.g. "is" (the token is " is")
    plural_verb: str
    plural_subject: bool
    attractor_plural: bool
    continuation: str

    @property
    def correct(self) -> str:
        return self.plural_verb if self.plural_subject else self.singular_verb

    @property
    def wrong(self) -> str:
        return self.singular_verb if self.plural_subject else self.plural_verb

    @property
    def sentence(self) -> str:
        return f"{self.prefix} {self.correct} {self.continuation}."


@dataclass(frozen=True)
class GenderItem:
    """``prefix`` ends right before the pronoun (" he" / " she")."""

    profession: str
    prefix: str
    p_she: float  # probability of "she" in the training text


@dataclass
class World:
    seed: int
    triplets: list[tuple[str, str, str]]
    templates: dict[str, list[str]]
    held_out_templates: dict[str, list[str]]
    taxonomy: dict[str, str]  # child -> parent (IsA)
    roots: list[str]
    subcategories: list[str]
    subsubcategories: list[str]
    entities: list[str]
    cities: list[str]
    countries: list[str]
    languages: list[str]
    target_roots: list[str]
    narrative_train: list[str]
    narrative_valid: list[str]
    agreement_train: list[str]  # full sentences (training text)
    agreement_test: list[AgreementItem]  # held-out noun pairs
    gender_train: list[str]
    gender_test: list[GenderItem]
    meta: dict = field(default_factory=dict)

    def subtree_triplets(self, root: str) -> list[tuple[str, str, str]]:
        """IsA triplets inside the subtree under ``root`` (edges to ``root``
        and below), as Bayazit et al. build a TargetKG from a hypernym root."""
        nodes = {root}
        changed = True
        while changed:
            changed = False
            for c, p in self.taxonomy.items():
                if p in nodes and c not in nodes:
                    nodes.add(c)
                    changed = True
        return [t for t in self.triplets if t[1] == "IsA" and t[2] in nodes]

    def fact_sentences(self, held_out: bool = False) -> list[str]:
        temps = self.held_out_templates if held_out else self.templates
        return [verbalise(tp, h, t) for h, r, t in self.triplets for tp in temps[r]]


# --------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------


class _Namer:
    """Invents unique pronounceable names from syllables."""

    def __init__(self, rng: random.Random, taken: set[str]):
        self.rng = rng
        self.taken = taken

    def _syl(self, final: bool) -> str:
        r = self.rng
        return r.choice(_ONSETS) + r.choice(_VOWELS) + (r.choice(_CODAS) if final else "")

    def word(self, n_min: int = 2, n_max: int = 3) -> str:
        n = self.rng.randint(n_min, n_max)
        return "".join(self._syl(i == n - 1) for i in range(n))

    def new(self, two_words_p: float = 0.0, capital: bool = False, n_min: int = 2, n_max: int = 3) -> str:
        for _ in range(10_000):
            if self.rng.random() < two_words_p:
                name = self.word(1, 2) + " " + self.word(2, 2)
            else:
                name = self.word(n_min, n_max)
            if capital:
                name = " ".join(w.capitalize() for w in name.split())
            key = name.lower()
            if key not in self.taken and len(key) <= 16:
                self.taken.add(key)
                return name
        raise RuntimeError("ran out of names")


def generate_world(
    seed: int = 0,
    n_subcategories_per_root: int = 3,
    subsub_range: tuple[int, int] = (2, 4),
    entities_per_subsub: tuple[int, int] = (4, 9),
    attribute_p: float = 0.6,
    n_cities: int = 20,
    n_countries: int = 8,
    n_stories_train: int = 1500,
    n_stories_valid: int = 200,
    n_agreement_train: int = 3000,
    n_agreement_test: int = 400,
    n_gender_train: int = 2000,
) -> World:
    """Generate the whole world from ``seed`` (deterministic, no global state)."""
    rng = random.Random(seed)
    taken: set[str] = set()
    for w in ROOTS + COLOURS + MATERIALS + USES + [n for p in AGR_NOUNS for n in p] + list(PROFESSIONS):
        taken.add(w.lower())
    namer = _Namer(rng, taken)

    # ---- places -------------------------------------------------------
    countries = [namer.new(capital=True, n_min=2, n_max=2) for _ in range(n_countries)]
    languages = [namer.new(capital=True, n_min=2, n_max=2) + "ic" for _ in range(n_countries)]
    cities = [namer.new(capital=True, n_min=2, n_max=3) for _ in range(n_cities)]
    triplets: list[tuple[str, str, str]] = []
    city_country = {}
    # every country gets at least one city (its capital); others random
    shuffled = cities[:]
    rng.shuffle(shuffled)
    capitals = dict(zip(countries, shuffled[:n_countries]))
    for co, ci in capitals.items():
        city_country[ci] = co
    for ci in shuffled[n_countries:]:
        city_country[ci] = rng.choice(countries)
    for ci in cities:
        triplets.append((ci, "PartOf", city_country[ci]))
    for co in countries:
        triplets.append((co, "HasCapital", capitals[co]))
    for co, la in zip(countries, languages):
        triplets.append((co, "HasLanguage", la))

    # ---- taxonomy -------------------------------------------------------
    taxonomy: dict[str, str] = {}
    subcats, subsubs, entities = [], [], []
    target_roots = []
    for root in ROOTS:
        for _ in range(n_subcategories_per_root):
            sc = namer.new()
            subcats.append(sc)
            taxonomy[sc] = root
            for _ in range(rng.randint(*subsub_range)):
                ss = namer.new()
                subsubs.append(ss)
                taxonomy[ss] = sc
                for _ in range(rng.randint(*entities_per_subsub)):
                    e = namer.new(two_words_p=0.25)
                    entities.append(e)
                    taxonomy[e] = ss
    for child, parent in taxonomy.items():
        triplets.append((child, "IsA", parent))

    # ---- entity attributes (functional, closed tail sets) ---------------
    for e in entities:
        triplets.append((e, "AtLocation", rng.choice(cities)))
        if rng.random() < attribute_p:
            triplets.append((e, "HasColor", rng.choice(COLOURS)))
        if rng.random() < attribute_p:
            triplets.append((e, "MadeOf", rng.choice(MATERIALS)))
        if rng.random() < attribute_p:
            triplets.append((e, "UsedFor", rng.choice(USES)))

    world = World(
        seed=seed,
        triplets=triplets,
        templates={k: list(v) for k, v in TEMPLATES.items()},
        held_out_templates={k: list(v) for k, v in HELD_OUT_TEMPLATES.items()},
        taxonomy=taxonomy,
        roots=list(ROOTS),
        subcategories=subcats,
        subsubcategories=subsubs,
        entities=entities,
        cities=cities,
        countries=countries,
        languages=languages,
        target_roots=[],
        narrative_train=[],
        narrative_valid=[],
        agreement_train=[],
        agreement_test=[],
        gender_train=[],
        gender_test=[],
    )
    for sc in subcats:
        n = len(world.subtree_triplets(sc))
        if 11 <= n <= 40:
            target_roots.append(sc)
    world.target_roots = target_roots

    # ---- narrative ------------------------------------------------------
    def story() -> str:
        p1, p2 = rng.sample(PEOPLE, 2)
        e1, e2 = rng.sample(entities, 2)
        c = rng.choice(cities)
        s = [
            f"{rng.choice(STORY_OPENERS)}, {p1} walked to {c}.",
            f"{p1} {rng.choice(STORY_VERBS)} a {e1} near the {rng.choice(['river', 'market', 'hill', 'gate', 'well'])}.",
            f"{p2} {rng.choice(STORY_VERBS)} the {e1} and smiled.",
        ]
        if rng.random() < 0.6:
            s.append(f"Then {p1} and {p2} {rng.choice(STORY_VERBS)} a {e2}.")
        if rng.random() < 0.5:
            s.append(f"{p2} asked {p1} about the {e2}.")
        s.append(rng.choice(STORY_ENDINGS))
        return " ".join(s)

    world.narrative_train = [story() for _ in range(n_stories_train)]
    world.narrative_valid = [story() for _ in range(n_stories_valid)]

    # ---- agreement ------------------------------------------------------
    pairs = [(i, j) for i in range(len(AGR_NOUNS)) for j in range(len(AGR_NOUNS)) if i != j]
    rng.shuffle(pairs)
    n_test_pairs = len(pairs) // 6
    test_pairs, train_pairs = pairs[:n_test_pairs], pairs[n_test_pairs:]

    def agr_item(pair) -> AgreementItem:
        i, j = pair
        subj_pl = rng.random() < 0.5
        attr_pl = rng.random() < 0.5
        subj = AGR_NOUNS[i][int(subj_pl)]
        attr = AGR_NOUNS[j][int(attr_pl)]
        sv, pv, cont = rng.choice(AGR_VERBS)
        prefix = f"The {subj} {rng.choice(AGR_PREPS)} the {rng.choice(AGR_ADJS)} {attr}"
        return AgreementItem(prefix, sv, pv, subj_pl, attr_pl, cont)

    world.agreement_train = [agr_item(rng.choice(train_pairs)).sentence for _ in range(n_agreement_train)]
    seen = set()
    test = []
    while len(test) < n_agreement_test:
        it = agr_item(rng.choice(test_pairs))
        if it.prefix not in seen:
            seen.add(it.prefix)
            test.append(it)
    world.agreement_test = test

    # ---- gender ---------------------------------------------------------
    profs = list(PROFESSIONS)
    gtrain = []
    for _ in range(n_gender_train):
        prof = rng.choice(profs)
        pron = "she" if rng.random() < PROFESSIONS[prof] else "he"
        gtrain.append(f"The {prof} {rng.choice(GENDER_VERBS)} {pron} {rng.choice(GENDER_CONT)}.")
    world.gender_train = gtrain
    world.gender_test = [
        GenderItem(prof, f"The {prof} {v}", PROFESSIONS[prof]) for prof in profs for v in GENDER_VERBS
    ]
    world.meta = {
        "n_entities": len(entities),
        "n_triplets": len(triplets),
        "n_target_roots": len(target_roots),
    }
    return world


def tokenizer_corpus(world: World, reps: int = 3) -> list[str]:
    """Text to train the BPE on: the *training* text with every invented name
    taken out, plus each entity name exactly once.  Entity names therefore
    split into syllable pieces (several BPE tokens each) instead of becoming
    single tokens, while common words and the closed tail sets (colours,
    materials, uses, categories, places) become leading-space tokens.  Held-out
    template wording is deliberately absent (its tokens must be trained)."""
    names = (world.entities + world.subcategories + world.subsubcategories + world.cities
             + world.countries + world.languages)
    by_len = sorted(names, key=len, reverse=True)

    def strip(s: str) -> str:
        for n in by_len:
            if n in s:
                s = s.replace(n, "thing")
        return s

    out: list[str] = []
    closed = {"HasColor": COLOURS, "MadeOf": MATERIALS, "UsedFor": USES, "IsA": ROOTS}
    for _ in range(reps):
        for rel, temps in world.templates.items():
            for tp in temps:
                for tail in closed.get(rel, ["thing"]):
                    out.append(verbalise(tp, "thing", tail))
    out += [strip(s) for s in world.narrative_train]
    out += world.agreement_train + world.gender_train
    # Closed tail sets (places, languages, categories) appear several times so
    # they become whole tokens like " red": a top-1 first-token prediction
    # then picks exactly one tail.  Entities (heads only) appear once.
    tails = world.subcategories + world.subsubcategories + world.cities + world.countries + world.languages
    out += [" " + n for n in world.entities]
    out += [" " + n for n in tails for _ in range(reps + 2)]
    return out


def knowledge_graph(world: World, name: str = "tiny-world"):
    """The world's facts as a :class:`kcs_tl.data.kg.KnowledgeGraph`."""
    from kcs_tl.data.kg import KnowledgeGraph, Triplet

    return KnowledgeGraph(
        [Triplet(h, r, t) for h, r, t in world.triplets],
        templates={k: list(v) for k, v in world.templates.items()},
        held_out_templates={k: list(v) for k, v in world.held_out_templates.items()},
        name=name,
    )
