"""Python bytecodes executed per function in a running process, between two signals.

Owns: ``python -m loadtest.optrace -m MODULE ARGS...`` runs ``MODULE`` as ``-m`` would,
with SIGUSR2 toggling an opcode counter (``sys.settrace`` with ``f_trace_opcodes``): the
first SIGUSR2 clears the counts and starts counting in frames entered from then on, the
next stops and writes ``file:line name count`` lines (most first) to
``$OPTRACE_OUT.<n>`` (n = 1, 2, ...). Slow (tens of times) but deterministic: the same
work gives the same counts, whatever the machine's load. ``loadtest.sockcost --trace``
drives it.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from collections import Counter
from types import CodeType, FrameType
from typing import Any

counts: Counter[CodeType] = Counter()
_state = {"on": False, "dumps": 0}


def _tracer(frame: FrameType, event: str, arg: Any) -> Any:
    if event == "call":
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return _tracer
    if event == "opcode":
        counts[frame.f_code] += 1
    return _tracer


def _toggle(signum: int, frame: FrameType | None) -> None:
    if not _state["on"]:
        counts.clear()
        _state["on"] = True
        sys.settrace(_tracer)
        return
    sys.settrace(None)
    _state["on"] = False
    _state["dumps"] += 1
    out = f"{os.environ.get('OPTRACE_OUT', '/tmp/optrace')}.{_state['dumps']}"
    with open(out, "w") as f:
        for code, n in counts.most_common():
            f.write(f"{code.co_filename}:{code.co_firstlineno} {code.co_qualname} {n}\n")
    counts.clear()


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        sys.exit("usage: python -m loadtest.optrace -m MODULE [ARGS...]")
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # run as a script: the broker's tree comes from PYTHONPATH
    signal.signal(signal.SIGUSR2, _toggle)
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
