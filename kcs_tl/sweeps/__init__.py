"""Sweeps: grids of discoveries (TargetKGs x settings x seeds) on Ray, or in-process without it.

``kcs_tl.sweep(...)`` (``driver``) expands the grid (``grid``), runs each
discover + evaluate in a worker (``worker``) on Ray or in this process
(``execution``), and aggregates the runs and their seed stability (``tables``).
``kcs-tl sweep SPEC.toml`` reads the same arguments from a file (``spec``).
"""

from kcs_tl.sweeps.driver import SweepResult, sweep
from kcs_tl.sweeps.grid import Run, expand

__all__ = ["Run", "SweepResult", "expand", "sweep"]
