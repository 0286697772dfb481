"""What every handler of the service shares: JSON errors, the caller, and the application's settings.

Like JupyterHub's ``apihandlers/base.py``: one ``write_error`` writes every error of the API as
``{"status": N, "message": "..."}`` (401/403 from authentication included), because the callers are
programs (the spawner, the magic, the CLI) that show the message to a person.

Every dependency reaches a handler one way: the tornado application's settings, which ``app.py``
fills once, read through the properties of :class:`ServiceUserMixin` (``self.allocator``,
``self.jobs``, ``self.hub_auth``, ...). No handler takes ``initialize`` arguments for them.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from jupyterhub.services.auth import HubAuthenticated, HubOAuth, UserNotAllowed
from tornado import web

from ..auth import Requester
from ..serialize import to_json

if TYPE_CHECKING:
    from ..allocator import Allocator
    from ..jobs import JobService

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

    def prepare(self) -> None:
        prefix = self.settings["service_prefix"]
        path = self.request.path if len(self.request.path) <= 200 else self.request.path[:200] + "..."
        raise api_error(
            404,
            f"no such path {path!r}; the service's API is under {prefix}{API_PREFIX}, described "
            f"by {prefix}{API_PREFIX}openapi.json",
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


class ServiceUserMixin(HubAuthenticated):
    """Who may come in, for the API and the pages alike, and what they reach.

    The hub's model of the caller becomes a :class:`Requester`, and only holders of the service's
    access or admin scope pass. The service's parts are the application's settings, read here.
    """

    requester: Requester

    @property
    def allocator(self) -> Allocator:
        """The one owner of every grant (``settings["allocator"]``)."""
        return self.settings["allocator"]

    @property
    def jobs(self) -> JobService:
        """Batch jobs: submitting, reading, cancelling (``settings["jobs"]``)."""
        return self.settings["jobs"]

    @property
    def hub_auth(self) -> Any:
        """The service's one :class:`HubOAuth` (``settings["hub_auth"]``), never a new instance."""
        return self.settings["hub_auth"]

    @property
    def service_name(self) -> str:
        return self.settings["service_name"]

    @property
    def admin_scope(self) -> str:
        return self.settings["admin_scope"]

    @property
    def hub_admins_are_admins(self) -> bool:
        return self.settings["hub_admins_are_admins"]

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

    def compute_etag(self) -> None:
        """No ETag: every answer reflects the ledger and the last scheduling pass, which change
        between any two calls, and nothing sends it back. Tornado would otherwise hash each body
        (a tenth of the event loop's time under load, for listings of hundreds of jobs)."""
        return None

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
        self.reply_json(status, to_json(payload))

    def reply_json(self, status: int, body: bytes) -> None:
        """Answer with a JSON text made already (a listing assembled from the ledger's bytes)."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(body)


def route_pattern(prefix: str, template: str) -> str:
    """``leases/{lease_id}`` -> a tornado pattern below ``<prefix>api/v1/``, with a named group for
    each path parameter."""
    parts = re.split(r"(\{\w+\})", template)
    pattern = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.escape(prefix.rstrip("/") + "/" + API_PREFIX) + pattern + "$"
