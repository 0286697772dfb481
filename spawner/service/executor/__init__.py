"""Batch executors: what runs a queued job on its GPUs and reports how it ended.

:mod:`.base` holds the interface the service drives; :mod:`.local` runs jobs as local processes,
each watched by :mod:`.supervisor`, with their state in the files of :mod:`.jobdir`.
"""

from .base import (
    ExecutionRefused,
    ExecutionSpec,
    ExecutionState,
    ExecutionStatus,
    Executor,
    UnknownJob,
    execution_environment,
)
from .local import LocalExecutor

__all__ = [
    "ExecutionRefused",
    "ExecutionSpec",
    "ExecutionState",
    "ExecutionStatus",
    "Executor",
    "LocalExecutor",
    "UnknownJob",
    "execution_environment",
]
