"""``GET gpus``: every GPU with what is free on it; who holds it only for those who see everyone.

``mps_daemon`` says whether the service runs an MPS control daemon for the card now
(:class:`~spawner.service.telemetry.mps_daemons.MPSDaemons`): the hub points a server at a card's
MPS pipe only where this is true, so a card in an MPS pool without a daemon (not found by NVML, a
simulated or static card) never sends a client to a pipe nobody listens on.
"""

from __future__ import annotations

from .base import APIHandler


class GPUsHandler(APIHandler):
    async def get(self) -> None:
        gpus = await self.allocator.gpus(show_holders=self.requester.sees_everyone)
        monitor = self.settings.get("monitor")
        daemons = self.settings.get("mps") or getattr(monitor, "mps", None)
        for gpu in gpus:
            gpu["mps_daemon"] = daemons is not None and daemons.serves(gpu["uuid"])
        self.reply(200, {"gpus": gpus})


default_handlers = [
    ("gpus", GPUsHandler),
]
