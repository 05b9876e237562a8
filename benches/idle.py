#!/usr/bin/env python3
"""Memory of idle TLS connections: the gateway beside nginx and HAProxy.

For each proxy (same configs as benches/load.py, proxy pinned to core 0): RSS at rest,
with --conns idle TLS connections open (each after its handshake and one keep-alive GET,
as a browser leaves them), and --settle seconds after they all closed.
Usage: python3 benches/idle.py [--conns 10000] [--settle 60] [--only gateway,nginx,haproxy]
"""

import argparse
import asyncio
import os
import resource
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


async def open_idle(port, n, request):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    gate = asyncio.Semaphore(100)
    conns = []

    async def one():
        async with gate:
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
            if request:
                w.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                await w.drain()
                head = await r.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await r.readexactly(length)
            conns.append(w)

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--settle", type=int, default=60)
    ap.add_argument("--only", default="gateway,nginx,haproxy")
    ap.add_argument("--no-request", action="store_true", help="idle right after the handshake")
    ap.add_argument("--no-build", action="store_true", help="use the gateway binary as it is")
    ap.add_argument("--bin", default=os.path.join(load.ROOT, "target/release/gateway"),
                    help="the gateway binary (default: the release build)")
    args = ap.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load.ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "gateway"], cwd=load.ROOT, check=True)
    gateway_bin = args.bin
    d = tempfile.mkdtemp(prefix="gateway-idle-")
    cert, key = load.dev_cert(d, gateway_bin)
    load.write_configs(d, cert, key)
    backend = load.start_backend(d)
    try:
        for proxy in args.only.split(","):
            p = load.start(proxy, d, gateway_bin)
            try:
                pids = load.proc_tree(p.pid)
                rest = rss_kib(pids)
                opened, held = asyncio.run(hold(load.PORTS[proxy], args.conns, not args.no_request, pids))
                print(f"{proxy:8} at rest {rest / 1024:6.1f} MiB  {args.conns} idle TLS "
                      f"{held / 1024:6.1f} MiB ({(held - rest) / args.conns:.1f} KiB each, opened in "
                      f"{opened:.0f} s)", flush=True)
                time.sleep(args.settle)
                after = rss_kib(pids)
                print(f"{proxy:8} {args.settle} s after closing: {after / 1024:6.1f} MiB "
                      f"({(after - rest) / max(rest, 1) * 100:+.0f} % above at rest)", flush=True)
            finally:
                load.stop(p)
    finally:
        load.stop(backend)


async def hold(port, n, request, pids):
    t = time.time()
    conns = await open_idle(port, n, request)
    opened = time.time() - t
    await asyncio.sleep(2)
    held = rss_kib(pids)
    for w in conns:
        w.close()
    await asyncio.sleep(0.5)
    return opened, held


if __name__ == "__main__":
    main()
