"""What the ledger answers, and the errors it raises.

An allocation that is refused for quota or capacity is an ordinary outcome that the spawner shows
to the user, so it is a value; only misuse (an id reused for another request) and a database that
stays locked are exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..core.quota import Refusal
from ..core.units import Lease


class LedgerError(RuntimeError):
    """Something the ledger cannot do; the message says what and why."""


class LeaseConflictError(LedgerError):
    """A lease id was reused for a different grant.

    A lease id names exactly one grant: a retry must repeat the same request, and a new request
    needs a new id, even after the old lease was released.
    """


class LedgerBusyError(LedgerError):
    """The database stayed locked by other writers through every retry."""


@dataclass(frozen=True, slots=True)
class AllocationResult:
    """Exactly one of ``lease``, ``refusal`` (quota) or ``no_capacity`` (a sentence) is set."""

    lease: Lease | None = None
    refusal: Refusal | None = None
    no_capacity: str | None = None
    existing: bool = False
    """True when the lease was granted earlier under the same id and is returned again."""

    def __post_init__(self) -> None:
        outcomes = [self.lease is not None, self.refusal is not None, self.no_capacity is not None]
        if sum(outcomes) != 1:
            raise ValueError("an allocation result holds exactly one of lease, refusal, no_capacity")

    @property
    def granted(self) -> bool:
        return self.lease is not None

    @property
    def reason(self) -> str | None:
        """Why nothing was granted, for the user; ``None`` when a lease was granted."""
        if self.refusal is not None:
            return self.refusal.message
        return self.no_capacity


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A lease with its bookkeeping: when it ended (``None`` while live) and its policy."""

    lease: Lease
    released_at: float | None
    policy_name: str

    @property
    def live(self) -> bool:
        return self.released_at is None


class GPUHolder(NamedTuple):
    """One live lease's share of one GPU, as the admin page lists it."""

    lease_id: str
    holder: str
    user: str
    milli_gpu: int


@dataclass(frozen=True, slots=True)
class InventorySync:
    """What a :meth:`Ledger.sync_inventory` changed, and the leases left on missing GPUs."""

    added: tuple[str, ...]
    """GPU uuids the ledger had never seen, or that were absent and came back."""
    removed: tuple[str, ...]
    """GPU uuids that were present and are missing from this inventory."""
    absent: tuple[str, ...]
    """Every GPU uuid now marked absent, including those missing since earlier syncs."""
    stranded_leases: tuple[str, ...]
    """Live lease ids with a share on an absent GPU: kept until their holders release them."""
