"""The REST API's handlers, under ``<service prefix>api/v1/``.

Errors are JSON ``{"status": N, "message": "..."}`` everywhere, including 401/403 from
authentication, because the callers are programs (the spawner, the magic, the CLI) that show the
message to a person.
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from typing import Any

from jupyterhub.services.auth import HubAuthenticated, HubOAuth, UserNotAllowed
from tornado import web

from spawner.core.units import Lease, WorkloadClass
from spawner.ledger import LeaseConflictError, LeaseRecord, LedgerBusyError

from .allocator import Allocator
from .auth import Requester
from .hub_users import UnknownUserError
from .lease_request import LeaseBody, LeaseBodyError, holder_expiry, parse_lease_body, server_of_holder
from .serialize import lease_json, to_json

API_PREFIX = "api/v1/"
MAX_BODY_DEPTH = 64
"""How deeply a request body may nest objects and arrays: far past any body of this API, and far
short of the depth at which Python's JSON reader runs out of recursion (a 500 otherwise)."""


def api_error(status: int, message: str) -> web.HTTPError:
    """An error whose message reaches the caller as written, even if it holds a '%' (a lease id)."""
    return web.HTTPError(status, "%s", message)


def error_sentence(handler: web.RequestHandler, **write_error_kwargs: Any) -> str:
    """The sentence of an error as ``write_error`` receives it: the ``HTTPError``'s own message (a
    refusal says what to do next), else the status's standard reason."""
    exc_info = write_error_kwargs.get("exc_info")
    error = exc_info[1] if exc_info is not None else None
    if isinstance(error, web.HTTPError) and error.log_message:
        return error.log_message % error.args if error.args else error.log_message
    return handler._reason


def error_json(status: int, message: str) -> str:
    """The body of every error of the service: ``{"status": N, "message": "..."}``."""
    return json.dumps({"status": status, "message": message})


class JSONErrorMixin:
    """Write every error as ``{"status", "message"}`` instead of tornado's HTML page."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = error_sentence(self, **kwargs)
        self.set_header("Content-Type", "application/json")
        self.finish(error_json(status_code, message))


class PublicHandler(JSONErrorMixin, web.RequestHandler):
    """Endpoints served without a token: health checks and the API description."""


class NotFoundHandler(PublicHandler):
    """Every path the service does not serve, whatever the method: a JSON 404 (the application's
    ``default_handler_class``), so that even a mistyped URL gets a sentence a program can show."""

    def initialize(self, prefix: str = "/") -> None:
        self.prefix = prefix

    def prepare(self) -> None:
        path = self.request.path if len(self.request.path) <= 200 else self.request.path[:200] + "..."
        raise api_error(
            404,
            f"no such path {path!r}; the service's API is under {self.prefix}{API_PREFIX}, described "
            f"by {self.prefix}{API_PREFIX}openapi.json",
        )


class NotANumber(float):
    """``NaN``, ``Infinity`` or ``-Infinity`` in a body: Python's JSON reader takes them, JSON has
    none; kept as what was written, so that :func:`json_problem` can name the field."""

    def __new__(cls, text: str) -> NotANumber:
        number = super().__new__(cls, text)
        number.text = text
        return number


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_problem(value: Any, max_depth: int = MAX_BODY_DEPTH) -> str | None:
    """What in a parsed body JSON text cannot carry, naming where: a number that is not finite
    (``NaN``, ``Infinity``, ``1e400``), text with a lone surrogate (``"\\ud800"``, which is not
    Unicode and fails wherever it is encoded), or nesting past ``max_depth``; None if none.

    Walked with a stack, not recursion: the body may be as deep as the reader allowed.
    """
    pending: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while pending:
        item, path = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            written = item.text if isinstance(item, NotANumber) else "a number too large for a float"
            return (
                f"{_where(path)}: {written} is not a finite number (JSON has no NaN or Infinity); "
                "give a finite number"
            )
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return f"{_where(path)}: {_LONE_SURROGATE}"
            continue
        if not isinstance(item, dict | list):
            continue
        if len(path) >= max_depth:
            return f"{_where(path)}: nested more than {max_depth} levels deep; keep bodies flatter"
        if isinstance(item, list):
            pending.extend((child, (*path, index)) for index, child in enumerate(item))
            continue
        for key, child in item.items():
            if _SURROGATE.search(key):
                return f"{_where(path)}: a field name {_LONE_SURROGATE}"
            pending.append((child, (*path, key)))
    return None


_LONE_SURROGATE = (
    "the text holds a lone UTF-16 surrogate (such as \\ud800), which is not Unicode; send UTF-8 text"
)


def _where(path: tuple[Any, ...]) -> str:
    where = "/".join(str(part) for part in path) or "body"
    return repr(where)[1:-1] if len(where) <= 200 else repr(where[:200])[1:-1] + "..."


class HealthHandler(PublicHandler):
    async def get(self) -> None:
        self.finish({"status": "ok"})


class OpenAPIHandler(PublicHandler):
    async def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(resources.files("spawner.service").joinpath("openapi.json").read_text())


class ServiceUserMixin(HubAuthenticated):
    """Who may come in, for the API and the pages alike: the hub's model of the caller becomes a
    :class:`Requester`, and only holders of the service's access or admin scope pass."""

    requester: Requester

    def initialize(
        self,
        allocator: Allocator,
        hub_auth: Any,
        service_name: str,
        admin_scope: str,
        hub_admins_are_admins: bool,
    ) -> None:
        self.allocator = allocator
        self.hub_auth = hub_auth
        self.service_name = service_name
        self.admin_scope = admin_scope
        self.hub_admins_are_admins = hub_admins_are_admins

    @property
    def hub_scopes(self) -> set[str]:
        # Access to the service, or its admin scope; the service itself is let in before this.
        return set(self.hub_auth.access_scopes) | {self.admin_scope}

    def admit(self, model: dict[str, Any]) -> Requester:
        """The caller as a :class:`Requester`; ``self.refuse_entry`` for one without the scopes."""
        requester = Requester.from_model(
            model,
            service_name=self.service_name,
            admin_scope=self.admin_scope,
            hub_admins_are_admins=self.hub_admins_are_admins,
        )
        if not requester.is_service_itself:
            try:
                self.check_hub_user(model)
            except UserNotAllowed:
                raise self.refuse_entry(
                    f"{requester.describe()} may not use the gpuslice service; it needs one of the "
                    f"scopes {', '.join(sorted(self.hub_scopes))}"
                ) from None
        return requester

    def refuse_entry(self, message: str) -> web.HTTPError:
        """The 403 for a caller without the scopes, in the handler's own form (JSON or a page)."""
        return api_error(403, message)


class APIHandler(JSONErrorMixin, ServiceUserMixin, web.RequestHandler):
    """An authenticated endpoint; ``self.requester`` says who called.

    Programs send a JupyterHub API token. The service's own web pages call the same API with the
    login cookie their OAuth left, and such calls must carry the pages' XSRF token (header
    ``X-XSRFToken``), so that another site cannot make a logged-in browser act here.
    """

    def check_xsrf_cookie(self) -> None:
        """JupyterHub's check for cookie-authenticated calls; a token-authenticated call needs none.

        A token in a header is something a cross-site form cannot send, so only calls that rely on
        the pages' login cookie are checked (by ``HubOAuth``, which skips token-authenticated ones).
        """
        if isinstance(self.hub_auth, HubOAuth):
            self.hub_auth.check_xsrf_cookie(self)

    def has_login_cookie(self) -> bool:
        """Whether the request carries the cookie that the service's OAuth login leaves."""
        return isinstance(self.hub_auth, HubOAuth) and bool(self.get_secure_cookie(self.hub_auth.cookie_name))

    async def prepare(self) -> None:
        model = await self.hub_auth.get_user(self, sync=False)
        if not model and self.has_login_cookie():
            # HubOAuth ignores a login cookie whose call lacks the XSRF token; say so, instead of
            # asking for an API token the page never had.
            try:
                self.check_xsrf_cookie()
            except web.HTTPError as error:
                raise api_error(
                    403,
                    f"this call is authenticated by the gpuslice pages' login cookie and must carry "
                    f"their XSRF token in the header X-XSRFToken ({error.log_message}); reload the "
                    "page, or call with 'Authorization: token <token>' instead",
                ) from None
        if not model:
            raise api_error(
                401,
                "this API needs a JupyterHub API token: send the header 'Authorization: token <token>' "
                "(or log in on the service's pages, which use the hub's login)",
            )
        self.requester = self.admit(model)

    def json_body(self) -> Any:
        """The body as JSON, or a 400 that says why not and where (see :func:`json_problem`)."""
        try:
            body = json.loads(self.request.body or b"null", parse_constant=NotANumber)
        except RecursionError:
            raise api_error(
                400, f"body: nested too deeply; objects and arrays may nest at most {MAX_BODY_DEPTH} levels"
            ) from None
        except ValueError as error:
            raise api_error(400, f"the body is not JSON ({error}); send a JSON object") from None
        problem = json_problem(body)
        if problem is not None:
            raise api_error(400, problem)
        return body

    def refuse_unless_for(self, user: str, action: str) -> None:
        if not self.requester.may_act_for(user):
            raise api_error(
                403, f"{self.requester.describe()} may not {action} of user {user}; only their own"
            )

    def reply(self, status: int, payload: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(to_json(payload))


class GPUsHandler(APIHandler):
    async def get(self) -> None:
        gpus = await self.allocator.gpus(show_holders=self.requester.sees_everyone)
        self.reply(200, {"gpus": gpus})


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


def lease_model(lease: Lease, released_at: float | None = None) -> dict[str, Any]:
    """A lease as the lease endpoints return it: with ``expires_at``, the expiry its holder carries
    (null for a lease that lasts as long as its server or job)."""
    return {**lease_json(lease, released_at), "expires_at": holder_expiry(lease.holder)}


class LeasesHandler(APIHandler):
    """``GET leases``, and ``POST leases``: a grant, under rules on who may ask how.

    The service itself (the spawner) and admins may ask for any user, by profile or by a raw slice
    ``request``, for a server of that user or for any holder with an ``expires_at``. A user asks
    for themselves only, by ``profile`` only (so every rule of the profile applies: its groups, its
    pool, its size), and for one of their own servers only. Whoever asks, a lease has a holder the
    reconciler checks or an expiry (``Allocator.allocate`` refuses any other with a 400).
    """

    async def get(self) -> None:
        user = self.get_argument("user", None)
        if not self.requester.sees_everyone:
            if user is not None:
                self.refuse_unless_for(user, "list the leases")
            user = self.requester.name
        leases = await self.allocator.leases(user)
        self.reply(200, {"leases": [lease_model(lease) for lease in leases]})

    def refuse_unless_may_ask(self, body: LeaseBody) -> None:
        """The 403 for a user asking as only admins and the service may (see the class)."""
        self.refuse_unless_for(body.user, "create leases on behalf")
        if self.requester.sees_everyone:
            return
        if body.profile_slug is None:
            raise api_error(
                403,
                f"{self.requester.describe()} may not ask for a raw slice 'request'; ask by 'profile' "
                "(one of those GET availability lists, as the hub's spawn page does), so that the "
                "profile's groups, pool and size apply; raw requests are for admins and the service",
            )
        if body.server is None:
            raise api_error(
                403,
                f"{self.requester.describe()} may hold leases only for their own servers: give the "
                f"holder '{body.user}/' (the default server) or '{body.user}/<server name>'",
            )

    async def post(self) -> None:
        body = self.json_body()
        try:
            lease_body = parse_lease_body(body, self.allocator.profiles)
        except LeaseBodyError as error:
            raise api_error(400, str(error)) from None
        self.refuse_unless_may_ask(lease_body)
        try:
            grant = await self.allocator.allocate(lease_body)
        except LeaseBodyError as error:
            raise api_error(400, str(error)) from None
        except UnknownUserError as error:
            raise api_error(400, f"user: {error}; give the name of a hub user") from None
        except LeaseConflictError as error:
            raise api_error(409, await self.conflict_message(lease_body.lease_id, error)) from None
        except LedgerBusyError as error:
            raise api_error(503, str(error)) from None
        result = grant.result
        if result.refusal is not None:
            self.reply(
                409,
                {
                    "status": 409,
                    "message": result.refusal.message,
                    "reason": "quota",
                    "refusal": result.refusal.to_dict(),
                },
            )
        elif result.no_capacity is not None:
            # Batch jobs may be borrowing the dev GPUs this slice needs: they give them back
            # (stop signal, grace period, requeue) while the caller waits and asks again.
            settings = self.application.settings
            scheduler, jobs = settings.get("scheduler"), settings.get("jobs")
            reclaiming = None
            if scheduler is not None and jobs is not None:
                reclaiming = await scheduler.reclaim_for_interactive(
                    jobs, lease_body.lease_id, self.allocator.placed(lease_body.slice_request)
                )
            if reclaiming is not None:
                self.set_header("Retry-After", str(reclaiming.retry_after_s))
                self.reply(409, reclaiming.to_dict())
            else:
                self.reply(409, {"status": 409, "message": result.no_capacity, "reason": "no_capacity"})
        else:
            scheduler = self.application.settings.get("scheduler")
            if scheduler is not None:
                scheduler.interactive_granted(lease_body.lease_id)
            self.reply(200 if result.existing else 201, {"lease": lease_model(result.lease)})

    async def conflict_message(self, lease_id: str, error: LeaseConflictError) -> str:
        """The ledger's sentence on a reused lease id, which says what the lease was granted for;
        only its user (and those who see everyone) read that. To anyone else the id is just taken."""
        record = await self.allocator.record(lease_id)
        if record is None or self.requester.may_act_for(record.lease.user):
            return str(error)
        return f"the lease id {lease_id!r} is taken; a lease id names one grant, so ask under a new lease id"


class LeaseHandler(APIHandler):
    """``GET`` and ``DELETE leases/{lease_id}``: a lease belongs to what holds it.

    A lease of another user answers 404 exactly as an unknown id does. A batch job's lease belongs
    to the service: nobody releases it here (409; cancel the job, which gives it back). A server's
    lease, or one with an expiry, is released by the service itself (the spawner, when the server
    stops) or an admin; its user gets 403 (stop the server from the hub), since from inside the
    server its own token could otherwise free a GPU the server keeps using.
    """

    async def _readable(self, lease_id: str) -> LeaseRecord:
        record = await self.allocator.record(lease_id)
        if record is None or not self.requester.may_act_for(record.lease.user):
            raise api_error(404, f"no lease {lease_id!r}")
        return record

    async def get(self, lease_id: str) -> None:
        record = await self._readable(lease_id)
        self.reply(200, {"lease": lease_model(record.lease, record.released_at)})

    def refuse_unless_may_release(self, lease: Lease) -> None:
        if lease.workload is WorkloadClass.batch:
            job_id = lease.holder  # the scheduler grants a job's lease to the job's id
            raise api_error(
                409,
                f"lease {lease.id} is held by job {job_id}, and the service gives it back when the job "
                f"ends; to free its GPUs, cancel the job instead: DELETE jobs/{job_id} "
                f"(or gpuslice jobs cancel {job_id})",
            )
        if self.requester.sees_everyone:
            return
        server = server_of_holder(lease.holder, lease.user)
        if server is None:
            expiry = holder_expiry(lease.holder)
            when = "by an admin" if expiry is None else "when it expires, or by an admin"
            raise api_error(
                403,
                f"lease {lease.id} is held by {lease.holder!r}, not by a server; it is released {when}, "
                f"and {self.requester.describe()} may not release it",
            )
        hub_api = f"/hub/api/users/{lease.user}/" + (f"servers/{server}" if server else "server")
        raise api_error(
            403,
            f"lease {lease.id} is held by the server {lease.holder!r} and is given back when that server "
            f"stops; {self.requester.describe()} may not release it while the server may still use its "
            f"GPU slice. To free it, stop the server from the hub instead (the hub's home page, or "
            f"DELETE {hub_api} with a hub token)",
        )

    async def delete(self, lease_id: str) -> None:
        record = await self._readable(lease_id)
        self.refuse_unless_may_release(record.lease)
        try:
            await self.allocator.release(lease_id)
        except LedgerBusyError as error:
            raise api_error(503, str(error)) from None
        record = await self.allocator.record(lease_id)
        self.reply(200, {"lease": lease_model(record.lease, record.released_at)})


ROUTES: list[tuple[str, type[web.RequestHandler]]] = [
    ("health", HealthHandler),
    ("openapi.json", OpenAPIHandler),
    ("gpus", GPUsHandler),
    ("availability", AvailabilityHandler),
    ("leases", LeasesHandler),
    ("leases/{lease_id}", LeaseHandler),
]
"""API paths below ``api/v1/``, as the OpenAPI document writes them, with their handlers."""


def route_pattern(prefix: str, template: str) -> str:
    """``leases/{lease_id}`` -> a tornado pattern with a named group for each path parameter."""
    parts = re.split(r"(\{\w+\})", template)
    pattern = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.escape(prefix.rstrip("/") + "/" + API_PREFIX) + pattern + "$"


def handlers(prefix: str, handler_settings: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    """The tornado handler list under ``prefix`` (e.g. ``/services/gpuslice/``): the REST API
    below ``api/v1/``, then the web pages and their OAuth callback."""
    from .jobs_handlers import JOB_ROUTES  # they build on APIHandler, defined above
    from .pages import page_handlers  # pages build on the same settings and on job_json

    rules = []
    for template, handler in ROUTES + JOB_ROUTES:
        settings = handler_settings if issubclass(handler, APIHandler) else {}
        rules.append((route_pattern(prefix, template), handler, settings))
    return rules + page_handlers(prefix, handler_settings)
