"""``rpevit bench layer``: see :mod:`rpevit.bench.layer`. Example::

python benchmarks/bench_layer.py --quick --out bench_out
"""

import sys

from rpevit.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(default="layer"))
