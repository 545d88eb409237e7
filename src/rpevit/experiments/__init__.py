"""Experiment grids: every model variant x seed trained and evaluated, resumably and shardably."""

from rpevit.experiments.cli import add_grid_arguments, run_grid_command
from rpevit.experiments.grid import run_grid, run_grid_parallel
from rpevit.experiments.plan import GridRun, parse_shard, plan_grid, shard_runs

__all__ = [
    "GridRun",
    "add_grid_arguments",
    "parse_shard",
    "plan_grid",
    "run_grid",
    "run_grid_command",
    "run_grid_parallel",
    "shard_runs",
]
