"""The hot loop over a read's one-frame transfers, on links the peer sends on.

Owns: ``transfers_in``, which ``Engine._parse`` runs while the connection is open (as the
AMQP 0-9-1 engine parses a whole read in one loop). It takes consecutive transfer frames
in the layout ``transfer.write_transfer`` writes for a delivery in one frame (frame
header, then ``00 53 14``, a list8 of 5 fields: handle smalluint, delivery-id uint,
delivery-tag binary8 of 8 bytes, message-format uint0, settled true/false), read with
one unpack, and does what the engine's general path (``Engine._transfer`` ->
``_link_transfer`` -> ``_deliver``) does for them: the session's incoming window (topped
up with a flow once half of it is used) and next-incoming-id, the link's credit and
delivery-count; then the message goes to the handler's ``on_message`` with no
``Transfer`` or ``Delivery`` object, or to ``Engine.deliver_one`` (a ``Delivery`` for
the handler's ``on_transfer``) when the handler has no ``on_message`` or the delivery
is unsettled in receiver-settle-mode second (duplicate detection).

Invariants:
- It returns at the first frame it does not take whole: incomplete, another
  performative or layout, or one the general path answers with an error or treats
  specially (no session, an ending session, no incoming window, an unknown, detached,
  broker-sending or half-assembled link, no credit, a message above the limit, a frame
  above max-frame-size); that frame goes through the general path, which answers it as
  it always did. Nothing is changed for a frame before every one of those checks passed.
- Errors the handler raises are answered as on the general path: ``LinkError`` detaches
  the link, ``SessionError`` ends the session, anything else goes up to ``feed``.
- It stops as soon as the connection is no longer open (the handler may close it).
- Payloads are copied out of the read buffer (``bytes``); nothing keeps a view of it.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from shardmq.amqp1.errors import LinkError, SessionError

if TYPE_CHECKING:
    from shardmq.amqp1.engine import Engine

HOT_SIZE = 33  # frame header + the performative of the layout below
# size, doff + type, channel, 8 bytes (00 53 14 C0 14 05 52 handle), 0x70, delivery-id,
# A0 08, the 8-byte tag (skipped), 0x43, settled
_HOT = struct.Struct(">IHHQBIH8xBB")
_PERF = 0x005314C0140552  # descriptor, list8 of size 20 and 5 items, smalluint constructor
_MASK = 0xFFFFFFFF  # sequence numbers wrap at 2**32
_OPEN = 4  # engine.OPEN (not imported: engine imports this module)
_SECOND = 1  # receiver-settle-mode second


def transfers_in(engine: Engine, buf: bytes | bytearray, pos: int) -> int:
    """Take the hot transfer frames from ``pos`` on; returns the position of the first
    frame not taken (see the module block)."""
    n = len(buf)
    if n - pos < HOT_SIZE:
        return pos
    unpack = _HOT.unpack_from
    sessions = engine.sessions
    max_frame = engine.max_frame
    max_body = engine.max_message_size + HOT_SIZE
    window = engine.session_window
    half = window // 2
    on_message = engine.on_message
    chan = -1
    s = None
    with memoryview(buf) as view:
        while n - pos >= HOT_SIZE:
            size, dt, channel, q, k70, did, ka, k43, st = unpack(buf, pos)
            end = pos + size
            if (
                q >> 8 != _PERF
                or dt != 0x0200
                or k70 != 0x70
                or ka != 0xA008
                or k43 != 0x43
                or end > n
                or size < HOT_SIZE
                or size > max_frame
            ):
                return pos
            if channel != chan:
                s = sessions.get(channel)
                chan = channel
            if s is None or s.ending or s.incoming_window <= 0:
                return pos
            link = s.links.get(q & 0xFF)
            if (
                link is None
                or link.detached
                or not link.role
                or link._partial is not None
                or link.credit <= 0
                or size > max_body
            ):
                return pos
            if st == 0x41:
                settled = True
            elif st == 0x42:
                settled = False
            else:
                return pos
            # taken: the bookkeeping of Engine._transfer and _link_transfer
            w = s.incoming_window - 1
            s.next_incoming_id = (s.next_incoming_id + 1) & _MASK
            if w <= half:
                s.incoming_window = window
                engine.session_flow(s)
            else:
                s.incoming_window = w
            link.credit -= 1
            link.delivery_count = (link.delivery_count + 1) & _MASK
            payload = bytes(view[pos + HOT_SIZE : end])
            try:
                if on_message is not None and (settled or link.rcv_settle_mode != _SECOND):
                    on_message(s, link, did, settled, payload)
                else:
                    tag = bytes(view[pos + 23 : pos + 31])
                    engine.deliver_one(s, link, did, tag, settled, payload)
            except LinkError as exc:
                engine.detach_link(s, link, exc)
            except SessionError as exc:
                engine.end_session(s, exc)
            pos = end
            if engine.state != _OPEN:
                return pos
    return pos
