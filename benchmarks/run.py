"""``python benchmarks/run.py [options]`` is ``eventlog bench [options]``, from a checkout.

The benchmark itself lives in :mod:`eventlog.bench`, so that ``eventlog bench`` works from
an installed package too; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import sys

from eventlog.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
