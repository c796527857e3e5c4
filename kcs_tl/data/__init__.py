"""Knowledge graphs, templates, verbalisation into token batches, LM text blocks, WordNet graphs."""

from kcs_tl.data.batch import IGNORE_INDEX, KGBatch
from kcs_tl.data.countries import load_countries
from kcs_tl.data.kg import KnowledgeGraph, Triplet
from kcs_tl.data.lm import lm_blocks, split_blocks
from kcs_tl.data.prose import load_prose
from kcs_tl.data.splits import check_disjoint, subtree, target_control_split
from kcs_tl.data.templates import check_template, split_templates
from kcs_tl.data.verbalise import best_templates, encode, tail_nll
from kcs_tl.data.wordnet import WORDNET_ROOTS, load_wordnet, load_wordnet_control

__all__ = [
    "IGNORE_INDEX",
    "KGBatch",
    "KnowledgeGraph",
    "Triplet",
    "WORDNET_ROOTS",
    "best_templates",
    "check_disjoint",
    "check_template",
    "encode",
    "lm_blocks",
    "load_countries",
    "load_prose",
    "load_wordnet",
    "load_wordnet_control",
    "split_blocks",
    "split_templates",
    "subtree",
    "tail_nll",
    "target_control_split",
]
