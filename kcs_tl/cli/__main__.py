"""``python -m kcs_tl.cli``: the ``kcs-tl`` command."""

import sys

from kcs_tl.cli import main

sys.exit(main())
