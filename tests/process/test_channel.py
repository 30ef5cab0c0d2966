"""The supervisor<->worker channel's sending side (``workers.channel.ChannelSender``)."""

from __future__ import annotations

import asyncio
import socket

from workers import channel


def test_sender_keeps_order_while_the_socket_is_full() -> None:
    async def main() -> list[bytes]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        a.setblocking(False)
        b.setblocking(False)
        errors: list[OSError] = []
        sender = channel.ChannelSender(a, errors.append)
        sender.loop = asyncio.get_running_loop()
        sent = [channel.USER + i.to_bytes(4, "big") * 2048 for i in range(2000)]
        for datagram in sent:
            sender.send(datagram)
        assert len(sender) > 0  # the socket filled up: the rest waits, in order
        got: list[bytes] = []
        while len(got) < len(sent):
            try:
                got.append(b.recv(channel.MAX_MESSAGE))
            except BlockingIOError:
                await asyncio.sleep(0.001)  # the loop runs the sender's writer callback
        assert not errors and len(sender) == 0
        a.close()
        b.close()
        return got == sent

    assert asyncio.run(main())


def test_sender_reports_a_broken_channel_and_drops_its_queue() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.close()
    errors: list[OSError] = []
    sender = channel.ChannelSender(a, errors.append)
    sender.send(channel.USER + b"x")
    assert len(errors) == 1 and len(sender) == 0
    a.close()
