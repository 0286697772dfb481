"""``GET gpus``: every GPU with what is free on it; who holds it only for those who see everyone."""

from __future__ import annotations

from .base import APIHandler


class GPUsHandler(APIHandler):
    async def get(self) -> None:
        gpus = await self.allocator.gpus(show_holders=self.requester.sees_everyone)
        self.reply(200, {"gpus": gpus})


default_handlers = [
    ("gpus", GPUsHandler),
]
