"""Sweep reports from local run directories: tables, bar plots, triplet diagrams."""

from dml.report.diagrams import (
    SavedDiagram,
    diagram_grid,
    first_seed_diagrams,
    load_triplet_diagrams,
)
from dml.report.dynamics import RunDynamics, read_dynamics
from dml.report.make import Report, ReportError, make_report
from dml.report.table import Cell, group_runs
from dml.runs.records import Run, RunFileError, collect_runs, latest_sweep

__all__ = [
    "Cell",
    "Report",
    "ReportError",
    "Run",
    "RunDynamics",
    "RunFileError",
    "SavedDiagram",
    "collect_runs",
    "diagram_grid",
    "first_seed_diagrams",
    "group_runs",
    "latest_sweep",
    "load_triplet_diagrams",
    "make_report",
    "read_dynamics",
]
