"""The locust users' timings, without a broker: what each reported request measures.

Locust patches the standard library (gevent) when imported, so each check runs in a
child interpreter, never in the test process."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.support.launch import REPO_ROOT

# find_spec, not importorskip: importing locust here would monkey-patch the whole
# test session (gevent) and break every later test that uses subprocess or sockets.
if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is not installed", allow_module_level=True)

# Drives RpcServerUser.serve on a fake clock: the request arrives after 1000 s of
# waiting, answering and acking it take 1 s each. Prints every reported request.
_RPC_SERVE = """
import json, types
import loadtest.locustfile as lf
from locust.env import Environment

clock = [0.0]
lf.time = types.SimpleNamespace(perf_counter=lambda: clock[0], time_ns=lambda: 0)

class Channel:
    def basic_publish(self, *a, **k):
        clock[0] += 1.0
    def basic_ack(self, tag):
        clock[0] += 1.0

def requests():
    clock[0] += 1000.0  # waiting for the next request
    props = types.SimpleNamespace(reply_to="reply", correlation_id="c1")
    yield types.SimpleNamespace(delivery_tag=1), props, b"12345678"
    clock[0] += 1000.0
    yield None, None, None  # an idle second
    clock[0] += 1000.0
    raise ConnectionError("gone")

env = Environment(user_classes=[lf.RpcServerUser])
seen = []
env.events.request.add_listener(
    lambda **kw: seen.append([kw["name"], kw["response_time"], kw["exception"] is not None])
)
user = lf.RpcServerUser(env)
user.ch = Channel()
user.requests = requests()
for _ in range(3):
    user.serve()
print(json.dumps(seen))
"""


def test_rpc_serve_times_the_handling_not_the_wait() -> None:
    res = subprocess.run(
        [sys.executable, "-c", _RPC_SERVE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    # one answered request: 2 s of handling (publish + ack), none of the 1000 s wait;
    # the idle second reports nothing; a failed wait is a failure with no handling time
    assert seen == [["rpc-serve", 2000.0, False], ["rpc-serve", 0.0, True]]
