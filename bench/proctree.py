"""CPU time and resident memory of a server and every process it spawned, read from /proc."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class TreeSample:
    cpu_s: float  # utime + stime of all live processes in the tree
    rss_mb: float  # the whole tree
    pids: tuple[int, ...]
    root_rss_mb: float = 0.0  # the root process alone (the gateway's serving process, without its drift worker)


def _stat_fields(pid: int, tid: int | None = None) -> list[str] | None:
    """/proc's stat fields after comm for a process, or for one of its threads (`tid`)."""
    try:
        raw = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces; everything after the last ')' is space separated.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def sample(root: int) -> TreeSample:
    cpu_ticks, rss_pages, root_pages, alive = 0, 0, 0, []
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if not fields:
            continue
        if pid == root:
            root_pages = int(fields[21])
        # after comm: state(0) ppid(1) ... utime(11) stime(12) ... rss(21)
        cpu_ticks += int(fields[11]) + int(fields[12])
        rss_pages += int(fields[21])
        alive.append(pid)
    return TreeSample(cpu_ticks / _TICKS, rss_pages * _PAGE / 1e6, tuple(alive), root_pages * _PAGE / 1e6)


def thread_cpu(root: int) -> dict[str, float]:
    """CPU seconds of every thread in the tree, by label: the root's event-loop (main) thread, its other
    threads, and each child process's threads together (the drift worker)."""
    out: dict[str, float] = {}
    for pid in descendants(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in map(int, tids):
            fields = _stat_fields(pid, tid)
            if not fields:
                continue
            if pid != root:
                label = f"child process {pid}"
            else:
                label = "main thread" if tid == root else f"thread {tid}"
            out[label] = out.get(label, 0.0) + (int(fields[11]) + int(fields[12])) / _TICKS
    return out


def wait_quiet(root: int, *, busy_below: float = 0.05, window_s: float = 0.5, timeout_s: float = 30.0) -> float:
    """Wait until the tree uses < `busy_below` of a core over `window_s` (background work after a run, such as
    a store writer's backlog, finished). Returns the seconds waited; gives up after `timeout_s`."""
    start = time.monotonic()
    last = sample(root).cpu_s
    while time.monotonic() - start < timeout_s:
        time.sleep(window_s)
        now = sample(root).cpu_s
        if now - last < busy_below * window_s:
            break
        last = now
    return time.monotonic() - start
