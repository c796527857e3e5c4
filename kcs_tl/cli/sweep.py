"""``kcs-tl sweep SPEC``: the grid of discoveries a spec file describes (``kcs_tl.sweeps``)."""

from __future__ import annotations

import sys

from kcs_tl.sweeps import sweep
from kcs_tl.sweeps.spec import read_spec
from kcs_tl.sweeps.worker import FAILED


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="a grid of discoveries (TargetKGs x settings x seeds), on Ray",
                       description="Run every discover + evaluate of the grid a spec file describes, skipping "
                       "runs already finished in the output folder; print the per-run table and the seed "
                       "stability table (Jaccard between seeds vs chance, intersection and majority evaluated).")
    p.add_argument("spec", help="a .toml or .json file (see kcs_tl.sweeps.spec)")
    p.add_argument("--out", help="output folder (default: the spec's out_dir, else kcs_out/sweep/<spec name>)")
    p.add_argument("--address", help="an existing Ray cluster (default: Ray started locally)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a locally started Ray (default: all)")
    p.add_argument("--sequential", action="store_true", help="run in this process, one run after the other")
    p.set_defaults(func=command)


def command(args) -> None:
    spec = read_spec(args.spec)
    overrides = {"out_dir": args.out, "ray_address": args.address, "num_cpus": args.num_cpus}
    spec |= {k: v for k, v in overrides.items() if v is not None}
    result = sweep(**spec, executor="sequential" if args.sequential else "auto")
    print(result)
    print(f"wrote {', '.join(str(f) for f in result.files)} and one folder per run in {result.out_dir}")
    failed = result.runs.run_id[result.runs.status == FAILED]
    if len(failed):  # the other runs are done; these raised, and their tracebacks say why
        print(f"kcs-tl sweep: {len(failed)} run(s) failed; tracebacks: "
              + ", ".join(str(result.out_dir / run / "traceback.txt") for run in failed), file=sys.stderr)
        raise SystemExit(1)
