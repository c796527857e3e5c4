"""The shipped WordNet TargetKGs and ControlKG."""

import pytest

from kcs_tl.data import WORDNET_ROOTS, check_disjoint, load_wordnet, load_wordnet_control, subtree
from kcs_tl.data.wordnet import DATA_DIR


@pytest.mark.parametrize("root", WORDNET_ROOTS)
def test_target_is_the_subtree_of_its_root(root):
    kg = load_wordnet(root)
    assert kg.name == root and 11 <= len(kg) <= 40
    assert kg.relations == ("IsA",) and kg.held_out_templates["IsA"]
    lemma = root.split(".")[0]
    assert set(subtree(kg, lemma)) == set(kg), "every tail chain must lead to the root"


def test_control_disjoint_from_every_target():
    control = load_wordnet_control()
    assert len(control) >= 200
    for root in WORDNET_ROOTS:
        target = load_wordnet(root)
        check_disjoint(target, control, by_head=True)
        assert not set(target.heads + target.tails) & set(control.heads + control.tails)


def test_unknown_root_lists_valid_ones():
    with pytest.raises(ValueError, match="location.n.01"):
        load_wordnet("location")


def test_shipped_files_are_small_and_licensed():
    assert sum(f.stat().st_size for f in DATA_DIR.iterdir()) < 1_000_000
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in (DATA_DIR / "LICENSE").read_text()
