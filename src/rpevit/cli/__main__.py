"""``python -m rpevit.cli``: the ``rpevit`` command."""

import sys

from rpevit.cli import main

sys.exit(main())
