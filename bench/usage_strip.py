"""What hiding the gateway-requested usage costs per relayed read of a stream (gateway.stream_usage).

Most clients do not ask for `stream_options.include_usage`, so the gateway asks on their behalf and
`UsageStripper` takes out what that added, read by read, for the whole stream. Two upstream styles, one
event per read as a token-by-token stream arrives:
  - vLLM: usage only in the final usage chunk; every other read has none;
  - OpenAI: `"usage":null` as the last member of every chunk.
Baseline in the same process: the same reads through the general path (every read cut into events at
their terminators, every event with usage parsed with orjson), which is what every read took before the
shortcuts. Output bytes are checked equal before anything is timed.

    python bench/usage_strip.py [--tokens 200] [--repeat 7] [--name usage_strip]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402

from bench.report import Report, fmt  # noqa: E402
from gateway.stream_usage import UsageStripper, _EVENT_END, _parsed_without_usage  # noqa: E402

HEAD = b'{"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1732000000,"model":"student-7b",'


def reads(style: str, tokens: int) -> list[bytes]:
    tail = b',"usage":null}' if style == "openai" else b"}"
    events = [b"data: " + HEAD + b'"choices":[{"index":0,"delta":{"content":"tok%d "},"logprobs":null,'
              b'"finish_reason":null}]' % i + tail + b"\n\n" for i in range(tokens)]
    events.append(b"data: " + HEAD + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]' + tail + b"\n\n")
    events.append(b"data: " + HEAD + b'"choices":[],"usage":{"prompt_tokens":31,"completion_tokens":%d,'
                  b'"total_tokens":%d}}\n\n' % (tokens, 31 + tokens))
    return events + [b"data: [DONE]\n\n"]


def general(data: list[bytes]) -> bytes:
    """Every read cut into events and every event with usage parsed: the path without shortcuts."""
    out = []
    pending = b""
    for read in data:
        buf = pending + read if pending else read
        start = 0
        for m in _EVENT_END.finditer(buf):
            event = buf[start:m.end()]
            out.append(_parsed_without_usage(event, event.rstrip(b"\r\n")) if b'"usage"' in event else event)
            start = m.end()
        pending = buf[start:]
    return b"".join(out)


def stripped(data: list[bytes]) -> bytes:
    s = UsageStripper()
    return b"".join(s.feed(read) for read in data) + s.flush()


def per_read_us(fn: Callable[[list[bytes]], bytes], data: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(20):
            fn(data)
        best = min(best, (time.perf_counter() - t) / 20 / len(data))
    return best * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=200, help="content chunks per stream")
    p.add_argument("--repeat", type=int, default=7, help="timed repetitions (best is kept)")
    p.add_argument("--name", default="usage_strip", help="results file stem under bench/results/")
    args = p.parse_args(argv)
    report = Report("UsageStripper: CPU per relayed read (one event per read)",
                    ["upstream style", "general path us/read", "UsageStripper us/read", "ratio", "us saved per stream"])
    for style in ("vllm", "openai"):
        data = reads(style, args.tokens)
        assert stripped(data) == general(data), style  # same bytes to the client either way
        base, new = per_read_us(general, data, args.repeat), per_read_us(stripped, data, args.repeat)
        report.rows.append([style, fmt(base, 3), fmt(new, 3), fmt(new / base), fmt((base - new) * len(data), 0)])
    report.notes.append(f"python bench/usage_strip.py --tokens {args.tokens} --repeat {args.repeat}; best of "
                        f"{args.repeat} x 20 streams of {args.tokens + 3} reads")
    report.publish(Console(), args.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
