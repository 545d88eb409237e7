"""``rpevit bench anchors``: see :mod:`rpevit.bench.anchors`. Example::

python benchmarks/bench_anchors.py --quick --out bench_out
"""

import sys

from rpevit.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(default="anchors"))
