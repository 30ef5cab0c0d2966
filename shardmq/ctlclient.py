"""The control socket's wire format and its client (what ``shardmq ctl`` commands use).

Owns: where a broker's control socket lives (``socket_path``: ``ctl.sock`` in its data
directory, so only users who may read the data directory may reach it, mode 0600), the
frame format, and ``call`` (one request, one answer).

Frames: one JSON object per line in each direction. A request is
``{"command": NAME, "args": {...}}``; the answer ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": TEXT}``. One connection may carry several requests in turn.

Invariants:
- A path too long for ``sun_path`` (108 bytes) is reached through
  ``/proc/self/fd/N/ctl.sock`` of an open descriptor of the directory, so any data
  directory works.
- ``call`` never raises anything but ``CtlError`` (no broker, refused, timed out), with a
  one-line message saying what to do.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

SOCKET_NAME = "ctl.sock"
SUN_PATH_MAX = 100  # leave room under the kernel's 108 bytes
TIMEOUT = 30.0
MAX_FRAME = 64 * 1024 * 1024


# exit codes, as rabbitmqctl's (sysexits.h)
EX_DATAERR = 65  # bad input, e.g. a missing password, a missing vhost to delete
EX_NOUSER = 67  # no such user
EX_UNAVAILABLE = 69  # refused (validation) or no broker to talk to
EX_SOFTWARE = 70  # already exists


class CtlError(Exception):
    """A ctl request that did not succeed; the text is what the user sees, ``code`` the
    exit code ctl ends with."""

    def __init__(self, text: str, code: int = EX_UNAVAILABLE) -> None:
        super().__init__(text)
        self.code = code


class Request(msgspec.Struct, forbid_unknown_fields=True):
    command: str
    args: dict[str, Any] = {}


class Answer(msgspec.Struct):
    ok: bool
    result: Any = None
    error: str = ""
    code: int = EX_UNAVAILABLE  # the exit code for a refusal


def socket_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / SOCKET_NAME


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A path for ``bind``/``connect`` that fits ``sun_path``: ``path`` itself, or the
    same socket through ``/proc/self/fd`` of its directory held open meanwhile."""
    if len(os.fsencode(str(path))) <= SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def call(data_dir: str | Path, command: str, timeout: float = TIMEOUT, **args: Any) -> Any:
    """Send one request to the broker running on ``data_dir``; its result, or
    ``CtlError`` with the broker's refusal or why it could not be reached."""
    path = socket_path(data_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            with reachable(path) as where:
                sock.connect(where)
        except FileNotFoundError:
            raise CtlError(
                f"no running broker found on data dir {data_dir} (no {SOCKET_NAME}); "
                "pass the --data-dir the broker was started with"
            ) from None
        except ConnectionRefusedError:
            raise CtlError(
                f"no running broker found on data dir {data_dir} ({SOCKET_NAME} refused); "
                "is it running?"
            ) from None
        except PermissionError:
            raise CtlError(
                f"permission denied on {path}: run ctl as the user the broker runs as"
            ) from None
        sock.sendall(msgspec.json.encode(Request(command, args)) + b"\n")
        data = _read_line(sock)
    except TimeoutError:
        raise CtlError(f"the broker on {data_dir} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise CtlError(f"cannot talk to the broker on {data_dir}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        answer = msgspec.json.decode(data, type=Answer)
    except msgspec.DecodeError:
        raise CtlError("the broker sent an answer ctl cannot read") from None
    if not answer.ok:
        raise CtlError(answer.error, answer.code)
    return answer.result


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise CtlError("the broker closed the control connection without answering")
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)
        if size > MAX_FRAME:
            raise CtlError("the broker's answer is too large")
