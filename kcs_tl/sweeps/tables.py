"""A sweep's tables: one row per run, one row per seed group, one row per group and module.

Written next to the run folders as CSV, and as Parquet too when pyarrow is
installed; each file atomically (``kcs_tl.files.atomic_file``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kcs_tl.files import atomic_file

RUN_COLUMNS = ["run_id", "task", "seed", "settings", "status", "criteria_met", "sparsity", "target_top1",
               "held_out_top1", "control_ratio", "lm_ppl_rise", "random_target_top1", "n_in_subnetwork",
               "best_step", "search_s", "wall_s", "error"]
"""The columns shown first (others follow: per-criterion checks, why the search stopped, the group)."""

STABILITY_COLUMNS = ["task", "settings", "seeds", "jaccard", "chance", "jaccard_over_chance", "intersection_size",
                     "intersection_target_top1", "intersection_control_ratio", "intersection_criteria_met",
                     "majority_size", "k", "majority_target_top1", "majority_control_ratio",
                     "majority_criteria_met", "error"]


def ordered(frame: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    """``frame`` with the ``first`` columns (those it has) leading."""
    lead = [c for c in first if c in frame.columns]
    return frame[lead + [c for c in frame.columns if c not in lead]]


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def write(frame: pd.DataFrame, folder: Path, stem: str) -> list[Path]:
    """``folder/stem.csv`` (and ``.parquet`` when pyarrow is installed); returns the paths written."""
    paths = [folder / f"{stem}.csv"]
    with atomic_file(paths[0]) as tmp:
        frame.to_csv(tmp, index=False)
    if parquet_available():
        paths.append(folder / f"{stem}.parquet")
        with atomic_file(paths[1]) as tmp:
            frame.to_parquet(tmp, index=False)
    return paths


def shown(frame: pd.DataFrame, columns: list[str]) -> str:
    """The leading ``columns`` of ``frame`` as aligned text (what ``kcs-tl sweep`` prints)."""
    if frame.empty:
        return "(none)"
    cols = [c for c in columns if c in frame.columns and (c != "error" or frame[c].notna().any())]
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_colwidth", 60):
        return frame[cols].to_string(index=False, float_format=lambda x: f"{x:.4f}")
