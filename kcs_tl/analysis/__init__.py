"""Studying a found subnetwork: reports now; patching comparisons and circuitsvis views to come."""

from kcs_tl.analysis.report import write_report

__all__ = ["write_report"]
