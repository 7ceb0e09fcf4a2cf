"""SSE relay: upstream chunks go to the client as they arrive, never buffered.

A client that leaves mid-stream cancels the relay (gateway.disconnects: a watcher task reads the
client's `http.disconnect` once a stream has been open for STREAM_WATCH_AFTER_S), which closes the upstream
connection so the model stops generating.
Chunks are kept (a list append) only so the final text and usage can be assembled after the stream has
ended. With a `strip` (gateway.stream_usage), the
usage the gateway asked for on the client's behalf is removed from what the client receives.

The read that ends with the `data: [DONE]` event also ends the response (one write for the event and the
chunked body's terminator, where a relay that waits for the upstream's end of body writes the terminator
apart: ~1 write in 4 a stream). The upstream is then read to its end so its connection goes back to the
pool; one that lingers after [DONE] is cut by the disconnect watch, since a server's receive() reports
`http.disconnect` once the response is complete (ASGI), within STREAM_WATCH_AFTER_S or so.
"""
from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from gateway.disconnects import DisconnectWatch
from gateway.errors import UpstreamError, error_body
from gateway.metrics import RouteSeries
from gateway.stream_usage import UsageStripper
from gateway.upstreams import UpstreamStream

_DONE_EVENT = b"data: [DONE]\n\n"


def _ends_with_done_event(chunks: list[bytes]) -> bool:
    """Whether the last read ends with a whole `data: [DONE]` event: its line starts after a line break
    (a raw line break cannot sit inside an SSE data line or a JSON string), in this read or the one before."""
    last = chunks[-1]
    if not last.endswith(_DONE_EVENT):
        return False
    if len(last) > len(_DONE_EVENT):
        return last[-len(_DONE_EVENT) - 1] == 0x0A
    return len(chunks) == 1 or chunks[-2].endswith(b"\n")


@dataclass(slots=True)
class StreamStats:
    ttft_s: float | None = None
    upstream_wait_s: float = 0.0
    completed: bool = False  # the client has the whole answer (up to `data: [DONE]`)
    client_disconnected: bool = False
    error: str | None = None
    chunks: list[bytes] = field(default_factory=list)


async def relay_sse(stream: UpstreamStream, send: Any, receive: Any, t_start: float, series: RouteSeries,
                    watch: DisconnectWatch, strip: UsageStripper | None = None) -> StreamStats:
    """Relays the stream body (the response start was already sent); ends the response unless the client left."""
    stats = StreamStats()
    keep = stats.chunks.append
    perf = time.perf_counter
    task = asyncio.current_task(watch.loop)
    if task is None or watch.timer is None:
        key = watch.follow(perf(), receive)
    else:  # inline (gateway.delayed_calls)
        key = id(task)
        watch.pending[key] = (perf(), (task, receive))
    # Inter-token gaps go straight into the histogram's buckets (a method call per chunk costs more than the
    # update); their sum and the upstream wait are added up locally and stored once, in `finally`.
    gaps = series.inter_token
    gap_bounds, gap_counts = gaps.bounds, gaps.counts
    gap_sum = 0.0
    waited_s = 0.0
    last = 0.0
    ended = False  # the response was ended with the [DONE] event's read
    reads = stream.chunks()
    try:
        waited = perf()
        async for chunk in reads:
            now = perf()
            waited_s += now - waited
            if last:
                gap_counts[bisect_left(gap_bounds, now - last)] += 1
                gap_sum += now - last
            else:
                stats.ttft_s = now - t_start
                series.ttft.observe(stats.ttft_s)
            last = now
            keep(chunk)
            done = chunk.find(b"[DONE]", -16) >= 0
            if strip is not None:
                chunk = strip.feed(chunk)
                if not chunk:
                    waited = perf()
                    continue
            if done and _ends_with_done_event(stats.chunks):
                if strip is not None:
                    chunk += strip.flush()
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
                stats.completed = ended = True
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if done:
                # Clients (the openai SDK among them) may hang up right after [DONE], before the upstream's
                # EOF: the answer is complete all the same.
                stats.completed = True
            waited = perf()
        if ended:
            async for _ in reads:  # to the upstream's end of body (normally in the same read), for the pool
                pass
        else:
            if strip is not None and (tail := strip.flush()):
                await send({"type": "http.response.body", "body": tail, "more_body": True})
            stats.completed = True
    except asyncio.CancelledError:
        if not watch.claim(key):
            raise
        stats.client_disconnected = True
    except UpstreamError as exc:
        stats.error = exc.message
        if not stats.completed:  # after [DONE] the client has its whole answer: nothing to add
            # Headers are gone already: tell the client in-band, as OpenAI does, then end the stream.
            err = b"data: " + error_body(exc.message, exc.type, None, exc.code) + b"\n\n"
            if strip is not None:
                err = strip.flush() + err  # what the client would have had of an unfinished event
            await send({"type": "http.response.body", "body": err, "more_body": True})
    finally:
        stats.upstream_wait_s = waited_s
        gaps.sum += gap_sum
        stream.close()
        watch.release(key)
    if not ended and not stats.client_disconnected:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    return stats
