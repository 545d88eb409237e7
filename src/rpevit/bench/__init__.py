"""``rpevit bench``: speed, memory, scaling, fidelity and hardware-ceiling benchmarks.

Each benchmark writes ``<name>.json`` (raw numbers, machine, command), ``<name>.md`` and
``<name>.png`` into ``--out`` and prints the table. See :mod:`rpevit.bench.common` for the
timing convention and :mod:`rpevit.bench.memory` for how peak memory is measured.
"""

from rpevit.bench.suite import BENCHMARKS, run_one, selected_benchmarks

__all__ = ["BENCHMARKS", "run_one", "selected_benchmarks"]
