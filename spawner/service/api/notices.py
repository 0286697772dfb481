"""``GET notices``: what the GPU monitor told a user: slices over their memory, servers stopped.

The monitor keeps recent notices in memory (``GPUMonitor.notices_kept``); this is how a user's
server, or any client of theirs, reads its own (the service's pages show them too). A user reads
their own; the service itself and admins read everyone's, or one user's with ``?user=``.
"""

from __future__ import annotations

from .base import APIHandler


class NoticesHandler(APIHandler):
    """The caller's notices (newest first), or everyone's for admins."""

    async def get(self) -> None:
        monitor = self.settings.get("monitor")
        asked = self.get_argument("user", None)
        if asked is None and not self.requester.sees_everyone:
            asked = self.requester.name
        if asked is not None:
            self.refuse_unless_for(asked, "read the GPU notices")
        notices = list(monitor.notices) if monitor is not None else []
        self.reply(
            200,
            {
                "monitoring": monitor is not None,
                "notices": [
                    {
                        "at": notice.at,
                        "user": notice.user,
                        "lease_id": notice.lease_id,
                        "kind": notice.kind,
                        "message": notice.message,
                    }
                    for notice in notices
                    if asked is None or notice.user == asked
                ],
            },
        )


default_handlers = [
    ("notices", NoticesHandler),
]
