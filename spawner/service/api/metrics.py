"""``GET metrics``: Prometheus metrics, for admins and monitoring tokens with the admin scope."""

from __future__ import annotations

from .base import APIHandler, api_error


class MetricsHandler(APIHandler):
    """The exposition text: the scheduling loop's figures, and the GPUs held as the allocator
    counts them now."""

    async def get(self) -> None:
        if not self.requester.sees_everyone:
            raise api_error(
                403,
                f"{self.requester.describe()} may not read the metrics; they need the scope "
                f"{self.admin_scope} or a hub admin",
            )
        nodes, leases = await self.allocator.holdings()
        body, content_type = self.jobs.metrics.render(nodes, leases)
        self.set_header("Content-Type", content_type)
        self.finish(body)


default_handlers = [
    ("metrics", MetricsHandler),
]
