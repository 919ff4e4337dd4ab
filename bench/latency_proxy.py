#!/usr/bin/env python3
"""Latency-injecting, request-counting HTTP/1.1 proxy for bench/s3.

Two subcommands:

  serve --upstream HOST:PORT --latency-ms N --log FILE --port-file FILE
      Listens on a free port of 127.0.0.1 (written to --port-file once bound)
      and forwards every TCP connection to the upstream S3 server. It adds N
      ms to every round trip: a new connection waits N ms before its first
      byte is forwarded (the TCP handshake of a real link), and every byte the
      server sends reaches the client N ms after the proxy received it
      (pipelined, so bandwidth is not throttled, only delayed). N = 0 forwards
      at once and only counts.

      Both directions are parsed as HTTP/1.1 on the side (Content-Length and
      chunked bodies, HEAD and 1xx answers), so each completed exchange is
      logged as one tab-separated line:
        start end conn method kind status req_body_bytes resp_body_bytes range target
      where kind is GET, GETR (ranged GET), PUT, HEAD, LIST (a GET with
      list-type=, prefix= or delimiter= on a bucket), DELETE, POST or OTHER;
      start/end are monotonic seconds from the request's head reaching the
      proxy to the answer's last byte reaching the client.
      The bytes are forwarded unchanged even if parsing fails (the line then
      reads kind UNPARSED).

  summarize FILE [--by-object]
      Reads such log lines (usually a slice for one command) and prints
      "key value" lines: counts per kind, body bytes both ways, connections,
      peak and mean requests in flight; with --by-object, counts per
      (kind, repository directory) such as "GET data" or "HEAD locks".

Python 3 standard library only.
"""

import argparse
import asyncio
import collections
import os
import sys
import time
from urllib.parse import urlsplit, parse_qs

LOG = None
# Seconds the proxy delays answers: an exchange ends for the client then.
DELAY = 0.0
CONN_IDS = iter(range(1, 1 << 62))


def log_line(fields):
    LOG.write("\t".join(str(f) for f in fields) + "\n")
    LOG.flush()


class Exchange:
    __slots__ = ("start", "method", "target", "rng", "req_bytes", "kind")

    def __init__(self, method, target, headers):
        self.start = time.monotonic()
        self.method = method
        self.target = target
        self.rng = headers.get("range", "-")
        self.req_bytes = 0
        self.kind = classify(method, target, headers)


def classify(method, target, headers):
    if method == "GET":
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True)
        path = parts.path.strip("/")
        if "list-type" in query or (
            "/" not in path and ("prefix" in query or "delimiter" in query or not query)
        ):
            return "LIST"
        return "GETR" if "range" in headers else "GET"
    if method in ("PUT", "HEAD", "DELETE", "POST"):
        return method
    return "OTHER"


class BodyReader:
    """Incremental HTTP/1.1 message framing (heads are parsed by the caller)."""

    def __init__(self):
        self.buf = bytearray()
        self.state = "head"
        self.remaining = 0  # body bytes left (length mode) or in current chunk
        self.body = 0

    def start_body(self, headers, no_body):
        self.body = 0
        if no_body:
            self.state = "done"
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self.state = "chunk-size"
        elif "content-length" in headers:
            self.remaining = int(headers["content-length"])
            self.state = "length" if self.remaining > 0 else "done"
        else:
            self.state = "eof"

    def feed_body(self):
        """Consumes body bytes from self.buf; returns True when the body ended."""
        while True:
            if self.state == "done":
                return True
            if self.state == "eof":
                self.body += len(self.buf)
                self.buf.clear()
                return False
            if self.state == "length" or self.state == "chunk-data":
                n = min(self.remaining, len(self.buf))
                del self.buf[:n]
                self.remaining -= n
                self.body += n
                if self.remaining:
                    return False
                self.state = "done" if self.state == "length" else "chunk-crlf"
                continue
            if self.state in ("chunk-size", "chunk-crlf", "trailer"):
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return False
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                if self.state == "chunk-crlf":
                    self.state = "chunk-size"
                elif self.state == "trailer":
                    if not line:
                        self.state = "done"
                else:
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.state = "trailer"
                    else:
                        self.remaining = size
                        self.state = "chunk-data"
                continue
            raise ValueError(self.state)


def parse_head(buf):
    """Splits a complete head off buf; returns (first_line, headers) or None."""
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return None
    head = bytes(buf[:i]).decode("latin-1")
    del buf[: i + 4]
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


class Connection:
    def __init__(self):
        self.id = next(CONN_IDS)
        self.pending = collections.deque()
        self.req = BodyReader()
        self.resp = BodyReader()
        self.current = None  # exchange whose request body is being read
        self.answering = None  # (exchange, status) whose response body is being read
        self.broken = False

    def client_bytes(self, data):
        if self.broken:
            return
        try:
            r = self.req
            r.buf += data
            while True:
                if r.state == "head":
                    parsed = parse_head(r.buf)
                    if parsed is None:
                        return
                    line, headers = parsed
                    method, target = (line.split(" ") + ["", ""])[:2]
                    self.current = Exchange(method, target, headers)
                    self.pending.append(self.current)
                    r.start_body(headers, no_body=False)
                    if r.state == "eof":  # a request without length has no body
                        r.state = "done"
                if r.feed_body():
                    self.current.req_bytes = r.body
                    r.state = "head"
                    continue
                self.current.req_bytes = r.body
                return
        except Exception as e:  # noqa: BLE001 - counting must never break forwarding
            self.fail(e)

    def server_bytes(self, data):
        if self.broken:
            return
        try:
            r = self.resp
            r.buf += data
            while True:
                if r.state == "head":
                    parsed = parse_head(r.buf)
                    if parsed is None:
                        return
                    line, headers = parsed
                    status = int(line.split(" ")[1])
                    if 100 <= status < 200 and status != 101:
                        continue  # interim answer (100 Continue): no exchange ends
                    ex = self.pending.popleft()
                    self.answering = (ex, status)
                    r.start_body(headers, no_body=ex.method == "HEAD" or status in (204, 304))
                if r.feed_body():
                    self.finish(r.body)
                    r.state = "head"
                    continue
                return
        except Exception as e:  # noqa: BLE001
            self.fail(e)

    def finish(self, resp_bytes):
        ex, status = self.answering
        self.answering = None
        log_line(
            [
                f"{ex.start:.6f}",
                f"{time.monotonic() + DELAY:.6f}",
                self.id,
                ex.method,
                ex.kind,
                status,
                ex.req_bytes,
                resp_bytes,
                ex.rng.replace(" ", ""),
                ex.target,
            ]
        )

    def closed(self):
        # A body delimited by the end of the connection ends now.
        if not self.broken and self.answering is not None:
            self.finish(self.resp.body)

    def fail(self, e):
        self.broken = True
        now = time.monotonic()
        log_line([f"{now:.6f}", f"{now:.6f}", self.id, "-", "UNPARSED", 0, 0, 0, "-", repr(e)])


async def serve(args):
    global LOG, DELAY
    LOG = open(args.log, "a", buffering=1)
    host, port = args.upstream.rsplit(":", 1)
    delay = DELAY = args.latency_ms / 1000.0

    async def handle(creader, cwriter):
        conn = Connection()
        try:
            if delay:
                await asyncio.sleep(delay)  # the handshake's round trip
            sreader, swriter = await asyncio.open_connection(host, int(port))
        except OSError:
            cwriter.close()
            return

        async def upstream():
            try:
                while data := await creader.read(65536):
                    conn.client_bytes(data)
                    swriter.write(data)
                    await swriter.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    swriter.write_eof()
                except (OSError, RuntimeError):
                    pass

        queue = asyncio.Queue()

        async def downstream_read():
            try:
                while data := await sreader.read(65536):
                    conn.server_bytes(data)
                    if delay:
                        await queue.put((time.monotonic() + delay, data))
                    else:
                        cwriter.write(data)
                        await cwriter.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                await queue.put(None)

        async def downstream_write():
            try:
                while (item := await queue.get()) is not None:
                    wait = item[0] - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    cwriter.write(item[1])
                    await cwriter.drain()
            except (ConnectionError, OSError):
                pass

        try:
            await asyncio.gather(upstream(), downstream_read(), downstream_write())
        finally:
            conn.closed()
            for w in (cwriter, swriter):
                try:
                    w.close()
                except OSError:
                    pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{bound}\n")
    os.replace(tmp, args.port_file)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- summarize
KINDS = ["GET", "GETR", "PUT", "HEAD", "LIST", "DELETE", "POST", "OTHER", "UNPARSED"]


def object_dir(target):
    """Repository directory of a request target: /bucket/prefix/DIR/... -> DIR."""
    path = urlsplit(target).path
    for d in ("data", "index", "snapshots", "keys", "locks", "wal"):
        if f"/{d}/" in path or path.endswith(f"/{d}"):
            return d
    if path.endswith("/config"):
        return "config"
    query = parse_qs(urlsplit(target).query)
    prefix = query.get("prefix", [""])[0].rstrip("/")
    if prefix:
        return "list:" + prefix.rsplit("/", 1)[-1]
    return "other"


def summarize(args):
    rows = []
    with open(args.file) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) >= 10:
                rows.append(p)
    counts = collections.Counter(r[4] for r in rows)
    out = {k.lower(): counts.get(k, 0) for k in KINDS}
    out["total"] = len(rows)
    out["req_bytes"] = sum(int(r[6]) for r in rows)
    out["resp_bytes"] = sum(int(r[7]) for r in rows)
    out["conns"] = len({r[2] for r in rows})
    out["errors"] = sum(1 for r in rows if r[5].isdigit() and int(r[5]) >= 400)
    # Requests in flight: peak over time, and the mean over the span from
    # the first request to the last answer (1.0 = strictly sequential).
    events = []
    busy = 0.0
    for r in rows:
        s, e = float(r[0]), float(r[1])
        events += [(s, 1), (e, -1)]
        busy += e - s
    events.sort(key=lambda x: (x[0], x[1]))
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    out["peak_inflight"] = peak
    span = (events[-1][0] - events[0][0]) if events else 0.0
    out["busy_s"] = f"{busy:.2f}"
    out["span_s"] = f"{span:.2f}"
    out["mean_inflight"] = f"{busy / span:.1f}" if span > 0 else "0"
    for k, v in out.items():
        print(k, v)
    if args.by_object:
        by = collections.Counter((r[4], object_dir(r[9])) for r in rows)
        size = collections.Counter()
        for r in rows:
            size[(r[4], object_dir(r[9]))] += int(r[6]) + int(r[7])
        for (kind, d), n in sorted(by.items(), key=lambda x: -x[1]):
            print(f"obj {kind} {d} {n} {size[(kind, d)]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--upstream", required=True)
    s.add_argument("--latency-ms", type=float, default=0.0)
    s.add_argument("--log", required=True)
    s.add_argument("--port-file", required=True)
    m = sub.add_parser("summarize")
    m.add_argument("file")
    m.add_argument("--by-object", action="store_true")
    args = ap.parse_args()
    if args.cmd == "serve":
        try:
            asyncio.run(serve(args))
        except KeyboardInterrupt:
            pass
    else:
        summarize(args)


if __name__ == "__main__":
    sys.exit(main())
