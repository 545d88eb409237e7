"""``rpevit bench scaling``: see :mod:`rpevit.bench.scaling`. Example::

python benchmarks/bench_scaling.py --quick --out bench_out
"""

import sys

from rpevit.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(default="scaling"))
