"""``rpevit bench ceiling``: see :mod:`rpevit.bench.ceiling`. Example::

python benchmarks/bench_ceiling.py --quick --out bench_out
"""

import sys

from rpevit.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(default="ceiling"))
