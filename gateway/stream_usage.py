"""Usage for every stream: ask the upstream for it, hide it from clients that did not ask.

Token metrics, token rate limits and teacher spend need `usage`, which OpenAI-compatible servers put in
a stream only under `stream_options.include_usage`. When the client did not ask, the gateway asks
(`with_usage`) and `UsageStripper` removes from the relayed bytes exactly what that added:
  - the final usage-only chunk (`"choices": []` and a `usage` object) is dropped;
  - OpenAI adds `"usage": null` to every other chunk: that member is cut out of the bytes;
  - a usage object on a chunk with choices (continuous usage stats; litellm) is re-serialised without it.
Every other event passes byte for byte. The relay still keeps the upstream's own bytes for parse_sse.
"""
from __future__ import annotations

import re
from typing import Any

import orjson

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
# The null member as OpenAI (compact) and Python's json (spaced) write it; an unescaped `"` after `,`
# or before `,` cannot sit inside a JSON string, so these bytes are always the member itself.
_NULL_USAGE = (b',"usage":null', b', "usage": null', b'"usage":null,', b'"usage": null, ')
# The same member last in the object, where OpenAI writes it: a member just before the closing brace that
# ends the JSON text is a member of the top-level object.
_NULL_USAGE_LAST = tuple(member + b"}" for member in _NULL_USAGE[:2])
_EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")


def with_usage(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The payload with usage asked for, or None to forward it unchanged (the client asked already, or
    its stream_options is malformed: the upstream's 400 is then the client's answer)."""
    opts = payload.get("stream_options")
    if opts is None:
        opts = {}
    elif not isinstance(opts, dict):
        return None
    current = opts.get("include_usage")
    if current is not None and current is not False:
        return None
    out = dict(payload)
    out["stream_options"] = {**opts, "include_usage": True}
    return out


def _without_usage(event: bytes) -> bytes:
    """One SSE event (terminator included) minus what include_usage added to it."""
    if b'"usage"' not in event:
        return event
    body = event.rstrip(b"\r\n")
    if body.startswith(b"data:"):
        for member in _NULL_USAGE_LAST:  # OpenAI's every chunk: cut without parsing it
            if body.endswith(member):
                return body[:-len(member)] + b"}" + event[len(body):]
    return _parsed_without_usage(event, body)


def _parsed_without_usage(event: bytes, body: bytes) -> bytes:
    """_without_usage for any event, by parsing it (`body`: the event without its terminator)."""
    if not body.startswith(b"data:"):
        return event
    try:
        doc = orjson.loads(body[5:])
    except orjson.JSONDecodeError:
        return event
    if not isinstance(doc, dict) or "usage" not in doc:
        return event
    usage = doc["usage"]
    if doc.get("choices") == [] and isinstance(usage, dict):
        return b""
    if usage is None:
        for member in _NULL_USAGE:
            if member in body:
                return event.replace(member, b"", 1)
    del doc["usage"]
    return b"data: " + orjson.dumps(doc) + event[len(body):]


class UsageStripper:
    """Cuts a byte stream into SSE events and strips the usage the gateway asked for (see module doc).

    `feed(read)` returns the complete events so far (an unfinished event waits for the next read);
    `flush()` returns what is left when the upstream stops.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        if not self._pending and data.endswith(_EVENT_ENDS) and b'"usage"' not in data:
            return data  # whole events, none with usage (most reads of a stream): nothing to cut or to keep
        return self._split(data)

    def _split(self, data: bytes) -> bytes:
        """feed() without its shortcut: every read cut into events."""
        buf = self._pending + data if self._pending else data
        if b"\r" not in buf:
            # LF-only framing, as every server we know writes it: bytes.split cuts where the regex would (the
            # leftmost `\n\n` first, without overlap) at a tenth of its cost; the last piece is unfinished.
            pieces = buf.split(b"\n\n")
            self._pending = pieces.pop()
            return b"".join([_without_usage(piece + b"\n\n") for piece in pieces])
        out: list[bytes] = []
        start = 0
        for m in _EVENT_END.finditer(buf):
            out.append(_without_usage(buf[start:m.end()]))
            start = m.end()
        self._pending = buf[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return _without_usage(rest) if rest else b""
