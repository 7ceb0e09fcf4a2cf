"""Reading the gateway's own /metrics during a benchmark (counter sums, waiting for the shadow queue)."""
from __future__ import annotations

import re
import time
import urllib.request

COUNTERS = ("distillgate_requests_total", "distillgate_shadow_offered_total", "distillgate_shadow_sampled_total",
            "distillgate_shadow_dropped_total", "distillgate_shadow_completed_total", "distillgate_shadow_queue_depth",
            "distillgate_pairs_total")


def scrape(base_url: str, names: tuple[str, ...] = COUNTERS) -> dict[str, float]:
    """Each metric summed over its label sets; metrics the server does not export are absent."""
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for metric in names:
        values = re.findall(rf"^{metric}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, flags=re.M)
        if values:
            out[metric] = sum(float(v) for v in values)
    return out


def wait_shadow_idle(base_url: str, timeout_s: float = 30.0) -> bool:
    """Wait until the shadow queue is empty, so one setting's backlog does not load the next run."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        depth = scrape(base_url, ("distillgate_shadow_queue_depth",)).get("distillgate_shadow_queue_depth")
        if not depth:
            return True
        time.sleep(0.2)
    return False


def shadow_note(counters: dict[str, float]) -> str | None:
    if "distillgate_shadow_offered_total" not in counters:
        return ("WARNING: the gateway exported no distillgate_shadow_offered_total: the evaluator was not running "
                "(check the gateway log), so shadow offers were NOT part of this measurement")
    return None
