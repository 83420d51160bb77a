#!/usr/bin/env python3
"""A stand-in for a wide-area link between two hosts of the benchmark: a TCP relay that holds
every piece of data for a fixed one-way delay before passing it on, in order, in each
direction. Used where a peer is meant to be remote (an XCA responding gateway of another
community) while everything runs on one machine's loopback. The kernel's netem would do this
in the network stack; it is not built into every kernel, so this relay does it in a process
of its own (its CPU is not the measured program's).

usage: python bench/wanlink.py --rtt-ms 40 LISTEN_PORT:UPSTREAM_PORT [...]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each piece delivered ``delay`` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue: collections.deque = collections.deque()
    ready = asyncio.Event()
    done = False

    async def deliver() -> None:
        while True:
            while not queue:
                if done:
                    return
                ready.clear()
                await ready.wait()
            at, data = queue.popleft()
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(deliver())
    try:
        while data := await reader.read(1 << 16):
            queue.append((loop.time() + delay, data))
            ready.set()
    except ConnectionError:
        pass
    finally:
        done = True
        ready.set()
        try:
            await task
            writer.write_eof()
        except (ConnectionError, OSError):
            pass


async def serve(listen: int, upstream: int, delay: float) -> asyncio.AbstractServer:
    async def on_client(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)  # the SYN on its way
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            cw.close()
            return
        for w in (cw, uw):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pipe(cr, uw, delay), pipe(ur, cw, delay))
        for w in (cw, uw):
            w.close()

    return await asyncio.start_server(on_client, "127.0.0.1", listen)


async def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rtt-ms", type=float, required=True, help="round-trip time added (half each way)")
    p.add_argument("routes", nargs="+", metavar="LISTEN_PORT:UPSTREAM_PORT")
    a = p.parse_args(argv)
    delay = a.rtt_ms / 2000
    servers = []
    for r in a.routes:
        listen, _, upstream = r.partition(":")
        servers.append(await serve(int(listen), int(upstream), delay))
    await asyncio.gather(*(s.serve_forever() for s in servers))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(0)
