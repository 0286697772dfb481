"""``GET availability``: the profiles a user may choose, whether each can be granted now, and why not."""

from __future__ import annotations

from ..hub_users import UnknownUserError
from .base import APIHandler, api_error


class AvailabilityHandler(APIHandler):
    async def get(self) -> None:
        own_name = self.requester.name if self.requester.kind == "user" else None
        user = self.get_argument("user", None) or own_name
        if user is None:
            raise api_error(400, "say whose availability to show: add ?user=NAME")
        self.refuse_unless_for(user, "see the availability")
        try:
            availability = await self.allocator.availability(user)
        except UnknownUserError as error:
            raise api_error(404, str(error)) from None
        self.reply(200, availability)


default_handlers = [
    ("availability", AvailabilityHandler),
]
