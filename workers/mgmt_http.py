"""The management HTTP API's server: RabbitMQ's ``/api`` on one port (aiohttp).

Owns: ``ManagementServer`` (an ``http_endpoint.HttpEndpoint``: ``bind`` the port,
``start`` serving over an ``AdminOps``, ``stop``), the request plumbing the endpoint modules share: HTTP basic auth against the
broker's users with RabbitMQ's tag rules (``need_admin``, ``need_vhost``, ``queue_of``, ...), RabbitMQ's
error JSON (``ApiError``), body parsing, pagination and sorting of lists (``listing``),
and ``worker_reports`` (the live counts of every worker, through ``workers.status``,
folded into ``workers.mgmt_stats``' history for message counts and rates).
The endpoints live in ``workers.mgmt_objects``, ``workers.mgmt_access`` and
``workers.mgmt_definitions``, ``workers.mgmt_messages``, ``workers.mgmt_publish``, ``workers.mgmt_nodes``, the web UI's files in ``workers.mgmt_static``; each
registers its routes with ``route``.

Invariants:
- It runs where metadata changes are ordered (beside ``workers.admin.AdminServer``):
  every change goes through ``workers.admin.submit``, so it is applied by every worker
  (and saved) before the HTTP answer; the message path never sees this server.
- Every request is authenticated (RabbitMQ asks credentials on every endpoint, health
  checks included) but the web UI's static files (``route(..., public=True)``, in
  ``workers.mgmt_static``), which carry no data; a user without a management tag gets 401, as
  RabbitMQ answers. Passwords are never logged. A browser's cross-site request to
  ``/api`` is refused before that (403, ``workers.mgmt_origin``).
- A bad request gets RabbitMQ's ``{"error": ..., "reason": ...}`` with its status and
  changes nothing; an unexpected exception gets a 500 with that JSON and one log line,
  never a traceback to the client. Bodies over ``MAX_BODY`` are refused (413).
- ``bind`` raises only ``workers.startup.StartupError`` (one line, exit code): a port in
  use stops the broker's start-up before anything is served.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from shardmq.auth.access import User
from shardmq.config import Config
from shardmq.management import ManagementSettings
from shardmq.net.tls_settings import TLSSettings
from workers.admin import AdminOps, CommandError
from workers.http_endpoint import HttpEndpoint
from workers.mgmt_stats import StatsHistory, history_for
from workers.startup import StartupError
from workers.status import WorkerReport

log = logging.getLogger("shardmq.management")

MAX_BODY = 10 * 1024 * 1024  # RabbitMQ's default http body limit is 10 MiB
REALM = 'Basic realm="RabbitMQ Management"'
MANAGEMENT_TAGS = frozenset({"administrator", "monitoring", "policymaker", "management"})
OPS: web.AppKey[AdminOps] = web.AppKey("ops", AdminOps)  # type: ignore[type-abstract]
SERVER: web.AppKey[ManagementServer] = web.AppKey("server", object)  # type: ignore[arg-type]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ROUTES: list[tuple[str, str, Handler]] = []
PUBLIC: set[Handler] = set()  # handlers answered without credentials (the UI's files)


def route(method: str, path: str, *, public: bool = False) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ROUTES.append((method, path, fn))
        if public:
            PUBLIC.add(fn)
        return fn

    return register


# ---------------------------------------------------------------------- errors
class ApiError(Exception):
    """An error answer as RabbitMQ's: status, ``error`` and ``reason``."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def not_found() -> ApiError:
    return ApiError(404, "Object Not Found", "Not Found")


def bad_request(reason: str) -> ApiError:
    return ApiError(400, "bad_request", reason)


def not_authorised(reason: str) -> ApiError:
    return ApiError(401, "not_authorised", reason)


def json_response(data: Any, status: int = 200) -> web.Response:
    """``data`` as compact JSON (as RabbitMQ writes it; msgspec's encoder: a 10,000-queue
    listing in a few tens of milliseconds)."""
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )


def _error_response(status: int, error: str, reason: str) -> web.Response:
    resp = json_response({"error": error, "reason": reason}, status=status)
    if status == 401:
        resp.headers["WWW-Authenticate"] = REALM
    return resp


# ---------------------------------------------------------------------- requests
def ops_of(request: web.Request) -> AdminOps:
    return request.app[OPS]


def user_of(request: web.Request) -> User:
    user: User = request["user"]
    return user


def is_admin(user: User) -> bool:
    return "administrator" in user.tags


def sees_all(user: User) -> bool:
    """Reads every vhost's objects (administrator, monitoring)."""
    return "administrator" in user.tags or "monitoring" in user.tags


def need_admin(request: web.Request) -> None:
    if not is_admin(user_of(request)):
        raise not_authorised("Not administrator user")


def need_policymaker(request: web.Request) -> None:
    tags = user_of(request).tags
    if "administrator" not in tags and "policymaker" not in tags:
        raise not_authorised("Not policymaker user")


def vhost_visible(request: web.Request, vhost: str, *, write: bool = False) -> bool:
    user = user_of(request)
    if is_admin(user) or (not write and "monitoring" in user.tags):
        return True
    return ops_of(request).metadata.access.permission(user.name, vhost) is not None


def need_vhost(request: web.Request, vhost: str, *, write: bool = False) -> None:
    """``vhost`` exists (404; a change names it as RabbitMQ: ``vhost_not_found``) and
    the user may see it (or change its objects) (401)."""
    if vhost not in ops_of(request).metadata.vhosts:
        raise ApiError(404, "not_found", "vhost_not_found") if write else not_found()
    if not vhost_visible(request, vhost, write=write):
        raise not_authorised("User not authorised to access virtual host")


def queue_of(request: web.Request) -> tuple[str, Any]:
    """The vhost and queue the path names (``{vhost}``, ``{name}``), from this
    process's metadata replica: 404 for an unknown vhost or queue, 401 for a vhost the
    user may not use (``need_vhost``)."""
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    need_vhost(request, vhost)
    q = ops_of(request).metadata.vhosts[vhost].queues.get(name)
    if q is None:
        raise not_found()
    return vhost, q


def vhosts_visible(request: web.Request) -> list[str]:
    return [v for v in ops_of(request).metadata.vhosts if vhost_visible(request, v)]


async def body_of(request: web.Request) -> dict[str, Any]:
    """The JSON object of the body ({} when there is none)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("not_json") from None
    if not isinstance(data, dict):
        raise bad_request("not_json")
    return data


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    v = body.get(name, default)
    if v is not None and not isinstance(v, kind):
        if kind is bool and isinstance(v, str) and v in ("true", "false"):
            return v == "true"
        raise bad_request(f"{name} has the wrong type")
    return v


def flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() == "true"


async def changed(awaitable: Awaitable[Any]) -> Any:
    """The result of a submitted op; a refusal is a 400 with the AMQP error's text."""
    try:
        return await awaitable
    except CommandError as exc:
        raise bad_request(str(exc)) from None


def no_content() -> web.Response:
    return web.Response(status=204)


def created() -> web.Response:
    return web.Response(status=201)


def listing(
    request: web.Request,
    rows: list[dict[str, Any]],
    finish: Callable[[dict[str, Any]], None] | None = None,
) -> web.Response:
    """``rows`` as RabbitMQ lists them: sorted by ``sort`` (default ``name``, reversed
    with ``sort_reverse``), filtered by ``name`` (``use_regex``), and with ``page`` a
    page object (``page_size``, default 100) instead of the plain list. ``finish``
    completes each row that is answered (after paging: a page of 100 out of 10,000
    queues builds 100 rows' statistics)."""
    q = request.query
    key = q.get("sort", "")
    if key:
        rows = sorted(
            rows, key=lambda r: _sort_key(r.get(key)), reverse=flag(request, "sort_reverse")
        )
    if "page" not in q:
        if finish is not None:
            for r in rows:
                finish(r)
        return json_response(rows)
    total = len(rows)
    name = q.get("name", "")
    if name:
        if flag(request, "use_regex"):
            import re

            try:
                pat = re.compile(name)
            except re.error:
                raise bad_request("invalid regular expression") from None
            rows = [r for r in rows if pat.search(str(r.get("name", "")))]
        else:
            rows = [r for r in rows if name in str(r.get("name", ""))]
    try:
        page = int(q.get("page", "1"))
        size = int(q.get("page_size", "100"))
    except ValueError:
        raise bad_request("page and page_size must be integers") from None
    if page < 1 or not 1 <= size <= 500:
        raise bad_request("Invalid page number or page size")
    filtered = len(rows)
    page_count = max(1, -(-filtered // size))
    if page > page_count:
        raise bad_request(f"page out of range, page: {page} page size: {size}, len: {filtered}")
    items = rows[(page - 1) * size : page * size]
    if finish is not None:
        for r in items:
            finish(r)
    return json_response(
        {
            "filtered_count": filtered,
            "item_count": len(items),
            "items": items,
            "page": page,
            "page_count": page_count,
            "page_size": size,
            "total_count": total,
        }
    )


def _sort_key(v: Any) -> tuple[int, Any]:
    if isinstance(v, bool | int | float):
        return (0, v)
    return (1, str(v) if v is not None else "")


# ---------------------------------------------------------------------- statistics
async def worker_reports(request: web.Request) -> list[WorkerReport]:
    """Every live worker's report, at most ``mgmt_stats.INTERVAL`` (5 s) old (newer ones
    are being gathered past ``MAX_AGE``, 1 s), asked of all workers at once (each
    answers from its own loop; nothing is recorded per message) and folded into the
    statistics history (message counts and rates): ``StatsHistory.fresh``."""
    return await request.app[SERVER].history.fresh()


# ---------------------------------------------------------------------- auth
def _credentials(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = text.partition(":")
    return (name, password) if sep else None


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.match_info.handler in PUBLIC:
            return await handler(request)
        creds = _credentials(request)
        if creds is None:
            return web.Response(status=401, headers={"WWW-Authenticate": REALM})
        user = ops_of(request).metadata.access.authenticate(*creds)
        if user is None:
            log.info("HTTP access denied: user '%s' - invalid credentials", creds[0])
            return _error_response(401, "not_authorized", "Login failed")
        if not MANAGEMENT_TAGS.intersection(user.tags):
            log.info("HTTP access denied: user '%s' - Not management user", creds[0])
            return _error_response(401, "not_authorised", "Not management user")
        request["user"] = user
        resp = await handler(request)
        if request.method != "GET" and resp.status < 400:  # one line per change, no body
            log.info("HTTP %s %s by '%s': %d", request.method, request.path, user.name, resp.status)
        return resp
    except ApiError as exc:
        return _error_response(exc.status, exc.error, exc.reason)
    except web.HTTPException as exc:
        if exc.status == 404:
            return _error_response(404, "Object Not Found", "Not Found")
        if exc.status == 413:
            return _error_response(413, "bad_request", "request body too large")
        if exc.status == 405:
            return _error_response(405, "Method Not Allowed", "Method Not Allowed")
        raise
    except Exception as exc:  # never a traceback to the client: one line, and a 500
        log.error(
            "HTTP %s %s failed: %s: %s", request.method, request.path, type(exc).__name__, exc
        )
        return _error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------- the server
class ManagementServer(HttpEndpoint):
    setting = "management.port"
    what = "management API"

    def __init__(
        self,
        settings: ManagementSettings,
        data_dir: str,
        node: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.ssl_context = ssl_context  # HTTPS (``management_tls``)
        self.data_dir = data_dir
        self.node = node
        self.started_at = time.time()
        self.listeners: list[dict[str, Any]] = []  # /api/overview's, filled by the caller
        self.history: StatsHistory = history_for(data_dir)  # counts and rates
        # connection name -> (time, recv_oct, send_oct, rates): ``mgmt_connections``
        self.octets: dict[str, tuple[float, int, int, float, float]] = {}

    async def start(self, ops: AdminOps) -> None:
        import workers.mgmt_static  # noqa: F401  (the web UI's files)

        # the endpoint modules register their routes in ROUTES
        from workers import (  # noqa: F401
            mgmt_access,
            mgmt_connections,
            mgmt_definitions,
            mgmt_limits,
            mgmt_messages,
            mgmt_nodes,
            mgmt_objects,
            mgmt_publish,
        )
        from workers.mgmt_origin import cross_site_guard  # CSRF: before authentication

        app = web.Application(middlewares=[cross_site_guard, _middleware], client_max_size=MAX_BODY)
        app[OPS] = ops
        app[SERVER] = self
        for method, path, fn in ROUTES:
            app.router.add_route(method, path, fn)
        await self.serve(app, self.ssl_context)
        scheme = "https" if self.ssl_context is not None else "http"
        log.info("management API on %s://%s:%d/api", scheme, self.settings.host, self.port)


def management_tls(settings: ManagementSettings, tls: TLSSettings) -> ssl.SSLContext | None:
    """The HTTPS context of the management listener (None: plain HTTP): the files of
    ``[management.ssl]``, or with ``tls = true`` those of ``[tls]`` (its versions and
    ciphers too); no client certificate is asked. ``StartupError`` (exit code
    ``TLS_CONFIG_INVALID``, one line) when the files cannot make one."""
    from shardmq.net.tls import TLSConfigError, build_context
    from workers.exitcodes import ExitCode

    own = settings.ssl
    if own.certfile:
        files = TLSSettings(certfile=own.certfile, keyfile=own.keyfile, cacertfile=own.cacertfile)
        where = "management.ssl."
    elif settings.tls:
        if not tls.certfile:
            raise StartupError(
                ExitCode.TLS_CONFIG_INVALID,
                "management.tls = true needs the [tls] section's certfile: set it, "
                "or give [management.ssl] certfile",
            )
        files = msgspec.structs.replace(tls, verify="verify_none", fail_if_no_peer_cert=False)
        where = "tls."
    else:
        return None
    try:
        return build_context(files)
    except TLSConfigError as exc:
        text = str(exc).replace("tls.", where)
        raise StartupError(ExitCode.TLS_CONFIG_INVALID, f"management API: {text}") from None


def management_server(config: Config, prometheus: Any = None) -> ManagementServer | None:
    """The management API's server with its port claimed (None when disabled);
    ``StartupError`` when the port cannot be had or its TLS files are bad. Its
    ``/api/overview`` listeners: AMQP (``amqp``), AMQPS (``amqp/ssl``), itself (``http``
    or ``https``) and ``prometheus`` (a ``PrometheusServer``, ``http/prometheus``), as
    RabbitMQ names them."""
    settings = config.management
    if not settings.enabled:
        return None
    from workers.mgmt_objects import node_name

    node = node_name()
    amqp = config.server
    if settings.host is None:  # follows the AMQP listener's interface
        settings = msgspec.structs.replace(settings, host=amqp.host)
    server = ManagementServer(settings, amqp.data_dir, node, management_tls(settings, config.tls))
    server.bind()
    ip = amqp.host or "::"
    listeners: list[dict[str, Any]] = []
    if amqp.tcp_listener:
        listeners.append({"node": node, "protocol": "amqp", "ip_address": ip, "port": amqp.port})
    if config.tls.enabled:
        listeners.append(
            {"node": node, "protocol": "amqp/ssl", "ip_address": ip, "port": config.tls.port}
        )
    web_proto = "https" if server.ssl_context is not None else "http"
    listeners.append(
        {"node": node, "protocol": web_proto, "ip_address": settings.host, "port": server.port}
    )
    if prometheus is not None:
        listeners.append(
            {
                "node": node,
                "protocol": "http/prometheus",
                "ip_address": prometheus.settings.host,
                "port": prometheus.port,
            }
        )
    server.listeners = listeners
    return server
