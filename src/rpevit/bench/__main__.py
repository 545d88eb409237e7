"""``python -m rpevit.bench [BENCHMARK ...] [--quick]``."""

import sys

from rpevit.bench.cli import main

sys.exit(main())
