"""The whole ``rpevit bench`` suite (layer, scaling, anchors, fidelity, ceiling). Example::

python benchmarks/bench_suite.py --quick --out bench_out
"""

import sys

from rpevit.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(default="all"))
