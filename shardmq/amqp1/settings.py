"""The ``[amqp1]`` section of the config file (AMQP 1.0 on the AMQP listeners).

Owns: ``AMQP1Settings``. ``anonymous``: offer SASL ANONYMOUS (and accept a connection
that skips SASL) logging in as ``anonymous_user``; off by default, as RabbitMQ 4 only
allows it for a user that exists. ``idle_time_out``: milliseconds offered in open (the
peer sends a frame, empty if need be, at least every half of it; a peer silent for two
of them is disconnected; 0 = none). ``max_frame_size``, ``channel_max``: offered in
open. ``session_window``: the incoming window (transfer frames) the broker gives each
session, which bounds what one session can have in flight towards it.
``link_credit``: the credit the broker grants a sending client's link, topped up as
its transfers arrive. ``link_recovery_timeout``: seconds the unsettled deliveries of a
receiving link lost without being closed (connection dropped, detach closed=false) wait
for the link to be re-attached under the same name by the same container (link
recovery) before they are requeued; 0 = requeued at once.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct


class AMQP1Settings(Struct, forbid_unknown_fields=True, kw_only=True):
    anonymous: bool = False
    anonymous_user: str = "guest"
    idle_time_out: Annotated[int, Meta(ge=0)] = 60000
    max_frame_size: Annotated[int, Meta(ge=512, le=2**32 - 1)] = 131072
    channel_max: Annotated[int, Meta(ge=0, le=65535)] = 2047
    session_window: Annotated[int, Meta(ge=1, le=2**31 - 1)] = 1024
    link_credit: Annotated[int, Meta(ge=1, le=2**31 - 1)] = 1000
    link_recovery_timeout: Annotated[float, Meta(ge=0)] = 60.0
