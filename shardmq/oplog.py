"""Logs an operator reads: the line formats (text, or one JSON object per line for
journald / Loki) and a bound on lines a client can make the broker repeat.

Owns: ``JsonFormatter`` (``server.log_format = "json"``: ``time``, ``level``,
``worker``, ``logger``, ``msg``, plus the event's own fields), ``formatter`` (the one a
process logs with), ``event`` (one line for an event an operator cares about: a
connection accepted or closed, a channel error, a refused login), and ``Budget``, the
per-kind bound behind ``event``.

Invariants:
- Never a line per message: events are connections, channels, alarms, logins.
- A kind of event a client can repeat at will (failed logins, refused connections,
  channel errors) logs at most ``BURST`` lines at once and ``RATE`` per second after
  that, per process (accepted and closed connections: 1000 at once, then 100 per
  second, against churn only); what was left out is counted, and the next line of
  that kind says how many (``(N similar lines suppressed)``; the ``suppressed`` field
  in JSON). A flood of failed connections thus costs a few lines per second.
- The JSON fields of an event are the same names in every line of its kind (``peer``,
  ``user``, ``vhost``, ``connection_name``, ``channel``, ``code``, ``reason``).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

BURST = 50  # lines of one kind logged at once before the bound applies
RATE = 10.0  # lines of one kind per second after that


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC, ms), level, worker (slot, or
    null for the supervisor / one-process broker), logger, msg, and ``fields``."""

    def __init__(self, worker: int | None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "worker": self.worker,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                doc.setdefault(k, v)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def formatter(fmt: str, tag: str = "") -> logging.Formatter:
    """The formatter of a process: ``fmt`` "json" or "text"; ``tag`` is a worker's
    ``w<slot>``."""
    if fmt == "json":
        worker = int(tag[1:]) if tag.startswith("w") and tag[1:].isdigit() else None
        return JsonFormatter(worker)
    prefix = f"{tag} " if tag else ""
    return logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")


class Budget:
    """A token bucket per kind of event: ``take(kind)`` is 0 or more (log it; that
    many were left out before), or -1 (leave it out)."""

    def __init__(self, burst: int = BURST, rate: float = RATE) -> None:
        self.burst = burst
        self.rate = rate
        self._tokens: dict[str, float] = {}
        self._at: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def take(self, kind: str, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        tokens = self._tokens.get(kind, float(self.burst))
        tokens = min(float(self.burst), tokens + (now - self._at.get(kind, now)) * self.rate)
        self._at[kind] = now
        if tokens < 1.0:
            self._tokens[kind] = tokens
            self._dropped[kind] = self._dropped.get(kind, 0) + 1
            return -1
        self._tokens[kind] = tokens - 1.0
        return self._dropped.pop(kind, 0)


BUDGET = Budget()
# accepted and closed connections are the normal business of a broker: a much larger
# bound, only against churn (a client opening and closing in a loop)
BUDGETS = {
    "connection_accepted": Budget(burst=1000, rate=100.0),
    "connection_closed": Budget(burst=1000, rate=100.0),
}


def event(logger: logging.Logger, level: int, kind: str, msg: str, **fields: Any) -> None:
    """Log one operator event of ``kind`` (bounded by ``BUDGET``); ``fields`` go into
    the JSON line as they are (the text line is ``msg``)."""
    if not logger.isEnabledFor(level):
        return
    dropped = BUDGETS.get(kind, BUDGET).take(kind)
    if dropped < 0:
        return
    if dropped:
        msg = f"{msg} ({dropped} similar lines suppressed)"
        fields["suppressed"] = dropped
    fields["event"] = kind
    logger.log(level, "%s", msg, extra={"fields": fields})
