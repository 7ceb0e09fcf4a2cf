"""Counting a window of a process's run under callgrind: the process calls `window_start()` and
`window_stop()` (callgrind client requests, through a helper compiled here with gcc and valgrind's
callgrind.h) around what is to be counted, so start-up, imports and warm-up are left out.

Run the process as `valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=DIR/cg.%p ...`;
the window's counts are in DIR's first dump (`cg.<pid>.1`), read by `read_window`.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

_TOGGLE_C = """
#include <valgrind/callgrind.h>
void window_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void window_stop(void) { CALLGRIND_DUMP_STATS_AT("window"); CALLGRIND_STOP_INSTRUMENTATION; }
"""
HEADER = Path("/usr/include/valgrind/callgrind.h")


def build_helper(work: Path) -> Path:
    """The shared library with window_start/window_stop (load it with ctypes.CDLL in the counted process)."""
    source, lib = work / "window.c", work / "libwindow.so"
    source.write_text(_TOGGLE_C)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(source)], check=True)
    return lib


def window_dumps(out: Path) -> list[Path]:
    return list(out.glob("cg.*.1"))


def read_window(out: Path) -> dict[str, int]:
    """The window's event totals ({"Ir": instructions, and cache events when simulated}) from `out`."""
    dumps = window_dumps(out)
    if not dumps:
        raise RuntimeError(f"no window dump in {out}")
    text = dumps[0].read_text()
    events = re.search(r"^events: (.+)$", text, re.MULTILINE)
    found = re.search(r"^(?:summary|totals): ([\d ]+)$", text, re.MULTILINE)
    if found is None or events is None:
        raise RuntimeError(f"no totals in {dumps[0]}")
    return dict(zip(events.group(1).split(), map(int, found.group(1).split())))
