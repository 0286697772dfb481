"""The service's log shows what users wrote, but never as control characters.

A job's name, a reason or a requested URL is interpolated into log lines; written raw, an escape
sequence in it would recolour or rewrite an admin's terminal, and a line break would forge a log
line of its own. The filter escapes the values (``spawner.core.text``), not the format strings.
"""

from __future__ import annotations

import logging

from spawner.core.text import escape_controls

TORNADO_LOGS = ("access", "application", "general")


class EscapeControls(logging.Filter):
    """Keeps control characters out of the service's log: the values a log line interpolates (a
    job's name, a URL of tornado's access log, a reason) are escaped; the code's own format
    strings are left alone. An exception keeps its line breaks (a list of profile mistakes reads
    one per line), and loses every other control character."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = {key: self._escaped(value) for key, value in record.args.items()}
        elif record.args:
            record.args = tuple(self._escaped(value) for value in record.args)
        return True

    @staticmethod
    def _escaped(value: object) -> object:
        if isinstance(value, str):
            return escape_controls(value)
        if isinstance(value, BaseException):
            return escape_controls(str(value), keep="\n\t")
        return value
