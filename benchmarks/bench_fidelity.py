"""``rpevit bench fidelity``: see :mod:`rpevit.bench.fidelity`. Example::

python benchmarks/bench_fidelity.py --quick --out bench_out
"""

import sys

from rpevit.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(default="fidelity"))
