"""Studying a found subnetwork: its components, activation patching on knowledge prompts, the
comparison of the two, circuitsvis views and a self-contained HTML report."""

from kcs_tl.analysis.answer_metrics import METRICS
from kcs_tl.analysis.comparison import (
    Comparison, compare, plot_overlap, random_components, roc_auc, spearman,
)
from kcs_tl.analysis.components import component_key, components
from kcs_tl.analysis.heatmaps import heatmaps
from kcs_tl.analysis.neuron_patching import patch_neurons
from kcs_tl.analysis.patching import GRANULARITIES, PatchingResult, attribute, patch
from kcs_tl.analysis.prompts import CORRUPTIONS, KnowledgePrompts, knowledge_prompts
from kcs_tl.analysis.report import Report, report, write_report
from kcs_tl.analysis.views import View, attention_view, logprob_view, topk_view

__all__ = [
    "CORRUPTIONS", "GRANULARITIES", "METRICS", "Comparison", "KnowledgePrompts", "PatchingResult", "Report",
    "View", "attention_view", "attribute", "compare", "component_key", "components", "heatmaps",
    "knowledge_prompts", "logprob_view", "patch", "patch_neurons", "plot_overlap", "random_components", "report",
    "roc_auc", "spearman", "topk_view", "write_report",
]
