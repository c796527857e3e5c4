"""The ``kcs-tl`` command: ``demo``, ``discover``, ``evaluate``, ``report``, ``interventions`` and ``sweep``.

``demo`` tells the whole story offline on the built-in model; ``discover`` and
``evaluate`` run the same steps on your own data and any TransformerLens model
whose weights you have locally.

A bad input (argument, file, setting: a ``kcs_tl.InputError``) or a file the
system refuses (``OSError``) prints one line naming it and exits with status 2,
without a traceback; any other exception is a bug and exits with status 1 and
its traceback; Ctrl-C exits with status 130. ``--out`` is checked before any
work, and every output folder is written atomically
(``kcs_tl.files.result_folder``).

One module per verb (``add_parser`` and ``command``), each a thin layer over
the public API and ``kcs_tl.loading``.
"""

from __future__ import annotations

import argparse
import sys

from kcs_tl.cli import demo, discover, evaluate, interventions, report, sweep
from kcs_tl.validate import InputError

VERBS = (demo, discover, evaluate, report, interventions, sweep)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kcs-tl", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{demo,discover,evaluate,report,interventions,sweep}")
    for verb in VERBS:
        verb.add_parser(sub)
    return p


USER_ERRORS = (InputError, OSError)
"""What a bad argument, file or setting raises; anything else (a built-in ValueError or TypeError
too) is a bug and keeps its traceback."""


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"kcs-tl {args.command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except USER_ERRORS as err:
        print(f"kcs-tl {args.command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
