"""The management API's guard against cross-site requests (issue 14 item 7).

Owns: ``cross_site_guard``, an aiohttp middleware that runs before authentication and
refuses a browser's request to ``/api`` made by another site's page.

Why: the web UI sends basic auth in an explicit header and never lets the browser keep
credentials of its own, but a user who once opened an ``/api`` URL in the browser and
typed a password into its native dialog has credentials the browser attaches by itself,
to requests from any page. Such a page could then change the broker with a form post or
an image (a CSRF). Browsers say where a request comes from; other clients (rabbitmqadmin,
AMQPStorm, curl) send neither header and are not affected.

Invariants:
- An ``/api`` request with ``Sec-Fetch-Site`` other than ``same-origin`` or ``none`` (the
  user's own navigation), or an ``Origin`` other than this server's own
  (``scheme://Host``), gets 403 with RabbitMQ's error JSON and changes nothing; the
  refusal is logged in one line, without credentials.
- The UI's own calls (same origin) and every request without those headers pass
  unchanged; the static files are not guarded (they carry no data, and are framed by
  nobody: ``workers.mgmt_static``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger("shardmq.management")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})


def cross_site(request: web.Request) -> str | None:
    """Why ``request`` is a cross-site browser request (None when it is not)."""
    site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    if site and site not in ALLOWED_FETCH_SITES:
        return f"Sec-Fetch-Site: {site}"
    origin = request.headers.get("Origin")
    if origin is not None:
        own = f"{request.scheme}://{request.host}".lower()
        if origin.strip().lower() != own:
            return f"Origin: {origin[:100]}"
    return None


@web.middleware
async def cross_site_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/api" or request.path.startswith("/api/"):
        why = cross_site(request)
        if why is not None:
            log.info(
                "HTTP %s %s refused: cross-site request (%s)", request.method, request.path, why
            )
            return web.json_response(
                {"error": "forbidden", "reason": "cross-site request refused"}, status=403
            )
    return await handler(request)
