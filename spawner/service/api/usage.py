"""``GET usage``: the accounting figures of a range of days, as JSON or CSV, for admins.

The same figures as the usage page (one reading of the ledger's rollup serves both): per card and
day the hours sampled and busy and the GPU-hours used; per user, group and class and day the
GPU-hours allocated and used. ``from`` and ``to`` are UTC days (YYYY-MM-DD), both included; the
last 14 days without them.
"""

from __future__ import annotations

from ..telemetry.usage import UsageRangeError, report_for
from .base import APIHandler, api_error

FORMATS = ("json", "csv")


class UsageHandler(APIHandler):
    """The usage figures of ``from``..``to`` in ``format`` (json, or csv for a spreadsheet)."""

    async def get(self) -> None:
        if not self.requester.sees_everyone:
            raise api_error(
                403,
                f"{self.requester.describe()} may not read the usage of every user; it needs the "
                f"scope {self.admin_scope} or a hub admin",
            )
        answer_format = self.get_argument("format", "json")
        if answer_format not in FORMATS:
            raise api_error(400, f"format: {answer_format[:40]!r} is not one of {', '.join(FORMATS)}")
        try:
            report = await report_for(
                self.settings, self.get_argument("from", None), self.get_argument("to", None)
            )
        except UsageRangeError as error:
            raise api_error(400, str(error)) from None
        if answer_format == "json":
            self.reply(200, report.to_json())
            return
        self.set_header("Content-Type", "text/csv; charset=UTF-8")
        self.set_header(
            "Content-Disposition", f'attachment; filename="gpuslice-usage-{report.first}-{report.last}.csv"'
        )
        self.finish(report.csv())


default_handlers = [
    ("usage", UsageHandler),
]
