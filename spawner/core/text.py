"""Text that other people wrote, made safe to show: one escaping rule for logs and terminals.

A job's name, a reason or a URL comes from a user and is shown to others (the service's log, an
admin's ``gpuslice jobs list --all``). Control characters in it could move a terminal's cursor,
recolour or retitle it, or start a log line of their own that passes for the service's; the text
is shown with them written as escapes instead. Pure, so the service and the CLI share it.
"""

from __future__ import annotations

_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROL_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
# Bidirectional overrides and line separators: they reorder or break what a terminal shows.
_CONTROL_ESCAPES |= {code: f"\\u{code:04x}" for code in (0x2028, 0x2029, *range(0x202A, 0x202F))}
_CONTROL_ESCAPES |= {code: f"\\u{code:04x}" for code in range(0x2066, 0x206A)}


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with control characters written as escapes (``\\x1b``, ``\\n``), except those in
    ``keep``: a job's name or a URL is shown as sent, but cannot move a terminal's cursor, recolour
    it, or start a log line of its own."""
    if not keep:
        return text.translate(_CONTROL_ESCAPES)
    table = {code: escaped for code, escaped in _CONTROL_ESCAPES.items() if chr(code) not in keep}
    return text.translate(table)
