"""Experiment grids: every model variant x seed trained and evaluated, resumably and shardably."""

from rpevit.experiments.grid import run_grid
from rpevit.experiments.parallel import GridSpec, run_grid_parallel, run_grids_parallel
from rpevit.experiments.plan import GridRun, parse_shard, plan_grid, shard_runs

__all__ = [
    "GridRun",
    "GridSpec",
    "parse_shard",
    "plan_grid",
    "run_grid",
    "run_grid_parallel",
    "run_grids_parallel",
    "shard_runs",
]
