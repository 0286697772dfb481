"""The durable ledger of leases: who holds which part of which GPU, on SQLite or PostgreSQL.

It is the one writer of allocation state (DESIGN.md, the one-scheduler principle): the service
owns a :class:`Ledger`, and everything else asks the service.
"""

from .results import (
    AllocationResult,
    GPUHolder,
    InventorySync,
    LeaseConflictError,
    LeaseRecord,
    LedgerBusyError,
    LedgerError,
)
from .store import Ledger

__all__ = [
    "AllocationResult",
    "GPUHolder",
    "InventorySync",
    "LeaseConflictError",
    "LeaseRecord",
    "Ledger",
    "LedgerBusyError",
    "LedgerError",
]
