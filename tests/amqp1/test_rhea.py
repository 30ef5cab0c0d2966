"""rhea (the Node.js AMQP 1.0 client, from npm) against a real broker, 1 and 3 workers:
send/receive with outcomes, and request/reply through a dynamic receiver.

rhea is installed into ``tests/amqp1/rhea/node_modules`` by npm at test time (pinned
in ``tests/amqp1/rhea/package.json``; not committed). The tests skip only where node or
npm is absent (``.ci/run`` installs them from Debian)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pika
import pytest

from tests.integration.conftest import Broker
from tests.integration.helpers import unique

RHEA_DIR = Path(__file__).parent / "rhea"


@pytest.fixture(scope="session")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed (Debian: apt-get install nodejs npm)")
    if not (RHEA_DIR / "node_modules" / "rhea").is_dir():
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=RHEA_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm install rhea failed:\n{done.stdout}\n{done.stderr}"
    return node


@pytest.fixture
def queue(broker: Broker) -> str:
    name = unique("rhea")
    conn = broker.blocking()
    conn.channel().queue_declare(name)
    conn.close()
    return name


def test_rhea_send_and_receive(node: str, broker: Broker, queue: str) -> None:
    done = subprocess.run(
        [node, "send_receive.js", str(broker.port), queue, "10"],
        cwd=RHEA_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert out["accepted"] == 10
    assert out["received"] == [[f"m{i}", i] for i in range(10)]


def test_rhea_request_reply(node: str, broker: Broker, queue: str) -> None:
    proc = subprocess.Popen(
        [node, "request_reply.js", str(broker.port), queue],
        cwd=RHEA_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["reply_to"].startswith("/queues/amq.gen-"), first
        conn = broker.blocking()
        try:
            ch = conn.channel()
            for _ in range(200):
                m, props, body = ch.basic_get(queue, auto_ack=True)
                if m is not None:
                    break
                conn.sleep(0.05)
            else:
                raise AssertionError("no request arrived")
            assert props.reply_to == first["reply_to"][len("/queues/") :]
            assert props.correlation_id == "rhea-1"
            ch.basic_publish(
                "", props.reply_to, b"pong", pika.BasicProperties(correlation_id="rhea-1")
            )
        finally:
            conn.close()
        reply = json.loads(proc.stdout.readline())
        assert reply == {"body": "pong", "correlation_id": "rhea-1"}
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
