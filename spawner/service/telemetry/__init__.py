"""GPU telemetry in local mode: sample the cards, hold slices to their size, account for use.

``readings`` reads NVML (or, without a GPU, the allocation); ``owners`` finds the lease of each
process on a card; ``enforcement`` decides what an over-slice lease gets; ``monitor`` runs them
every few seconds and keeps the accounting (the ledger's ``usage_rollup``); ``usage`` turns the
rollup into the figures the usage page, its plots and the CSV export show.
"""

from .monitor import GPUMonitor, LeaseUse, Notice, Poll

__all__ = ["GPUMonitor", "LeaseUse", "Notice", "Poll"]
