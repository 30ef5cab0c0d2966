"""The management web UI's static files, served on the management port (issue 14 item 3).

Owns: the public routes ``/``, ``/index.html`` and ``/js/{file}``, ``/css/{file}``,
``/img/{file}``, which answer
the files shipped in the package under ``shardmq/www`` (package data: no build step, no
download), and the security headers they carry.

Invariants:
- Only files under ``WWW`` are ever read: a name must be one plain path segment
  (``SAFE_NAME``: no ``/``, ``\\``, ``..``, leading dot or control characters) in one of the
  ``DIRS``, and the resolved file must still lie inside ``WWW``; anything else is a 404
  with RabbitMQ's error JSON, whatever encoding the request used (``%2e%2e``, ``%2f``).
- These routes need no credentials (the login page must load without them) and carry no
  data: the UI sends basic auth itself on every API call (``Authorization`` header from
  ``sessionStorage``, ``credentials: "omit"``), so no cookie is set, nor anything the
  browser would attach to a cross-site request (issue 14 item 7).
- Every answer forbids framing and inline script (``SECURITY_HEADERS``), so an object
  name rendered by the UI cannot run as code.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

import shardmq
from workers.mgmt_http import not_found, route

WWW = Path(shardmq.__file__).resolve().parent / "www"
DIRS = ("js", "css", "img")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def www_file(directory: str, name: str) -> Path | None:
    """The shipped file ``directory/name`` (``directory`` "" for the top level), or None
    when the name is not a plain file name of a known kind, or no such file exists."""
    if directory and directory not in DIRS:
        return None
    if not SAFE_NAME.match(name) or Path(name).suffix not in TYPES:
        return None
    root = WWW.resolve()
    path = (root / directory / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def _answer(path: Path | None) -> web.Response:
    if path is None:
        raise not_found()
    return web.Response(
        body=path.read_bytes(),
        headers={"Content-Type": TYPES[path.suffix], **SECURITY_HEADERS},
    )


@route("GET", "/", public=True)
@route("GET", "/index.html", public=True)
async def index(request: web.Request) -> web.Response:
    return _answer(www_file("", "index.html"))


@route("GET", "/js/{file}", public=True)
@route("GET", "/css/{file}", public=True)
@route("GET", "/img/{file}", public=True)
async def asset(request: web.Request) -> web.Response:
    directory = request.path.split("/")[1]  # the route's own prefix (js, css, img)
    return _answer(www_file(directory, request.match_info["file"]))
