"""GPU accounting kept compact: per card per hour, per user per day, added to as samples come.

The monitor samples every few seconds; writing each sample would grow the ledger by millions of
rows a week. Instead each sample's seconds are split at hour (and so day) boundaries, summed in
memory (:class:`PendingUsage`), and added to one row per card and hour and one per user, group and
workload class per day, every minute or so and when the service stops (:class:`UsageRollup`).
Rows older than the retention period are deleted as new ones are written, so the tables stay
bounded by cards x hours and users x days kept.

Adding, never overwriting, is what makes a restart in the middle of a day lose nothing: the
figures written before the restart stay in their rows, and the next service adds to the same
rows. Hours and days are UTC, so that they mean the same on every replica and across daylight
saving changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from .engine import reader
from .models import GPUHourUsageRow, GPUNoticeRow, HolderDayUsageRow

HOUR_S = 3600
DAY_S = 24 * HOUR_S


def hour_of(timestamp: float) -> int:
    return int(math.floor(timestamp / HOUR_S) * HOUR_S)


def day_of(timestamp: float) -> int:
    return int(math.floor(timestamp / DAY_S) * DAY_S)


def split_at(start: float, end: float, period_s: int) -> Iterator[tuple[int, float]]:
    """``(period_start, seconds)`` for each period (hour or day, UTC) that ``[start, end)`` covers:
    a sample from 23:59:58 to 00:00:03 gives 2 s to one day and 3 s to the next."""
    cursor = start
    while cursor < end:
        period = int(math.floor(cursor / period_s) * period_s)
        boundary = min(end, period + period_s)
        yield period, boundary - cursor
        cursor = boundary


@dataclass
class GPUHour:
    """One card's figures for one hour (see :class:`~spawner.ledger.models.GPUHourUsageRow`)."""

    gpu_uuid: str
    hour_start: int
    node: str
    gpu_index: int
    pools: str
    sampled_seconds: float = 0.0
    busy_seconds: float = 0.0
    used_gpu_seconds: float = 0.0
    measured: bool = True


@dataclass
class HolderDay:
    """One user's figures in one group and class for one day (group ``""``: none)."""

    day_start: int
    user: str
    group: str
    workload: str
    allocated_gpu_seconds: float = 0.0
    used_gpu_seconds: float = 0.0
    measured: bool = True


@dataclass(frozen=True, slots=True)
class GPUNotice:
    """Something the GPU monitor did or saw that a person should read: whose, when, the sentence."""

    at: float
    user: str
    lease_id: str
    kind: str
    message: str


class PendingUsage:
    """Sampled figures not yet written, summed by row key. Not thread-safe: the monitor's loop
    adds, and hands a whole :meth:`take` to the writer thread."""

    def __init__(self) -> None:
        self.gpu_hours: dict[tuple[str, int], GPUHour] = {}
        self.holder_days: dict[tuple[int, str, str, str], HolderDay] = {}

    def __bool__(self) -> bool:
        return bool(self.gpu_hours or self.holder_days)

    def add_gpu(
        self,
        gpu_uuid: str,
        node: str,
        gpu_index: int,
        pools: str,
        start: float,
        end: float,
        *,
        busy: bool,
        used_fraction: float,
        measured: bool,
    ) -> None:
        """One card sampled over ``[start, end)``: busy or not, and the share of it in use."""
        for hour, seconds in split_at(start, end, HOUR_S):
            row = self.gpu_hours.get((gpu_uuid, hour))
            if row is None:
                row = self.gpu_hours[(gpu_uuid, hour)] = GPUHour(gpu_uuid, hour, node, gpu_index, pools)
            row.sampled_seconds += seconds
            row.busy_seconds += seconds if busy else 0.0
            row.used_gpu_seconds += seconds * used_fraction
            row.measured = row.measured and measured

    def add_holder(
        self,
        user: str,
        group: str | None,
        workload: str,
        start: float,
        end: float,
        *,
        allocated_gpus: float,
        used_gpus: float,
        measured: bool,
    ) -> None:
        """One lease's holder over ``[start, end)``: GPUs held and GPUs really in use."""
        for day, seconds in split_at(start, end, DAY_S):
            key = (day, user, group or "", workload)
            row = self.holder_days.get(key)
            if row is None:
                row = self.holder_days[key] = HolderDay(day, user, group or "", workload)
            row.allocated_gpu_seconds += seconds * allocated_gpus
            row.used_gpu_seconds += seconds * used_gpus
            row.measured = row.measured and measured

    def take(self) -> PendingUsage:
        """Everything pending, leaving this empty (to write; :meth:`merge` it back if that fails)."""
        taken = PendingUsage()
        taken.gpu_hours, self.gpu_hours = self.gpu_hours, {}
        taken.holder_days, self.holder_days = self.holder_days, {}
        return taken

    def merge(self, other: PendingUsage) -> None:
        """Add ``other`` (a batch that could not be written) back, so it is written next time."""
        for row in other.gpu_hours.values():
            mine = self.gpu_hours.setdefault((row.gpu_uuid, row.hour_start), row)
            if mine is not row:
                mine.sampled_seconds += row.sampled_seconds
                mine.busy_seconds += row.busy_seconds
                mine.used_gpu_seconds += row.used_gpu_seconds
                mine.measured = mine.measured and row.measured
        for row in other.holder_days.values():
            mine = self.holder_days.setdefault((row.day_start, row.user, row.group, row.workload), row)
            if mine is not row:
                mine.allocated_gpu_seconds += row.allocated_gpu_seconds
                mine.used_gpu_seconds += row.used_gpu_seconds
                mine.measured = mine.measured and row.measured


class UsageRollup:
    """The rollup tables of a ledger's database: add pending figures, prune, read ranges.

    Writes are their own short transactions, not the allocator's: accounting never decides a
    grant, so it does not queue behind the allocator's lock (on SQLite it still takes the
    database's write lock, and waits for it like any writer).
    """

    def __init__(self, engine: Engine, retention_days: int = 400) -> None:
        if retention_days < 15:
            # The usage page shows the last 14 days; keeping fewer would leave it half empty.
            raise ValueError(f"retention_days must be at least 15, got {retention_days}")
        self.engine = engine
        self.retention_days = retention_days
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # Reads begin deferred on SQLite: they see one snapshot and never take the write lock.
        self._reads = sessionmaker(reader(engine), expire_on_commit=False)

    def _write(self, work: Callable[[Session], None]) -> None:
        with self._sessions.begin() as session:
            work(session)

    def add(self, pending: PendingUsage, now: float) -> None:
        """Add ``pending`` to the rows (creating them), and delete rows past the retention period."""

        def work(session: Session) -> None:
            for row in pending.gpu_hours.values():
                stored = session.get(GPUHourUsageRow, (row.gpu_uuid, row.hour_start))
                if stored is None:
                    session.add(
                        GPUHourUsageRow(
                            gpu_uuid=row.gpu_uuid,
                            hour_start=row.hour_start,
                            node=row.node,
                            gpu_index=row.gpu_index,
                            pools=row.pools,
                            sampled_seconds=row.sampled_seconds,
                            busy_seconds=row.busy_seconds,
                            used_gpu_seconds=row.used_gpu_seconds,
                            measured=row.measured,
                        )
                    )
                else:
                    stored.sampled_seconds += row.sampled_seconds
                    stored.busy_seconds += row.busy_seconds
                    stored.used_gpu_seconds += row.used_gpu_seconds
                    stored.measured = stored.measured and row.measured
            for row in pending.holder_days.values():
                key = (row.day_start, row.user, row.group, row.workload)
                stored = session.get(HolderDayUsageRow, key)
                if stored is None:
                    session.add(
                        HolderDayUsageRow(
                            day_start=row.day_start,
                            user=row.user,
                            group=row.group,
                            workload=row.workload,
                            allocated_gpu_seconds=row.allocated_gpu_seconds,
                            used_gpu_seconds=row.used_gpu_seconds,
                            measured=row.measured,
                        )
                    )
                else:
                    stored.allocated_gpu_seconds += row.allocated_gpu_seconds
                    stored.used_gpu_seconds += row.used_gpu_seconds
                    stored.measured = stored.measured and row.measured
            oldest_day = day_of(now) - self.retention_days * DAY_S
            session.execute(delete(GPUHourUsageRow).where(GPUHourUsageRow.hour_start < oldest_day))
            session.execute(delete(HolderDayUsageRow).where(HolderDayUsageRow.day_start < oldest_day))

        self._write(work)

    def gpu_hours(self, start: float, end: float) -> list[GPUHour]:
        """Card-hours whose hour starts in ``[start, end)``, by hour then card."""
        query = (
            select(GPUHourUsageRow)
            .where(GPUHourUsageRow.hour_start >= start, GPUHourUsageRow.hour_start < end)
            .order_by(GPUHourUsageRow.hour_start, GPUHourUsageRow.node, GPUHourUsageRow.gpu_index)
        )
        with self._reads.begin() as session:
            return [
                GPUHour(
                    row.gpu_uuid,
                    row.hour_start,
                    row.node,
                    row.gpu_index,
                    row.pools,
                    row.sampled_seconds,
                    row.busy_seconds,
                    row.used_gpu_seconds,
                    row.measured,
                )
                for row in session.scalars(query)
            ]

    def holder_days(self, start: float, end: float) -> list[HolderDay]:
        """User-days whose day starts in ``[start, end)``, by day, group, user and class."""
        query = (
            select(HolderDayUsageRow)
            .where(HolderDayUsageRow.day_start >= start, HolderDayUsageRow.day_start < end)
            .order_by(
                HolderDayUsageRow.day_start,
                HolderDayUsageRow.group,
                HolderDayUsageRow.user,
                HolderDayUsageRow.workload,
            )
        )
        with self._reads.begin() as session:
            return [
                HolderDay(
                    row.day_start,
                    row.user,
                    row.group,
                    row.workload,
                    row.allocated_gpu_seconds,
                    row.used_gpu_seconds,
                    row.measured,
                )
                for row in session.scalars(query)
            ]

    def add_notices(self, notices: list[GPUNotice], now: float) -> None:
        """Keep ``notices``; notices older than the retention period are deleted meanwhile."""

        def work(session: Session) -> None:
            session.add_all(
                GPUNoticeRow(
                    at=notice.at,
                    user=notice.user,
                    lease_id=notice.lease_id,
                    kind=notice.kind,
                    message=notice.message,
                )
                for notice in notices
            )
            oldest = day_of(now) - self.retention_days * DAY_S
            session.execute(delete(GPUNoticeRow).where(GPUNoticeRow.at < oldest))

        self._write(work)

    def recent_notices(self, limit: int) -> list[GPUNotice]:
        """The ``limit`` most recent notices, newest first."""
        query = select(GPUNoticeRow).order_by(GPUNoticeRow.at.desc(), GPUNoticeRow.id.desc()).limit(limit)
        with self._reads.begin() as session:
            return [
                GPUNotice(row.at, row.user, row.lease_id, row.kind, row.message)
                for row in session.scalars(query)
            ]
