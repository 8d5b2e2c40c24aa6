"""A reference point for the side-service benchmark, not a product: the smallest asyncio server that answers nginx's
auth_request with one RateLimiter.hit on the X-Forwarded-For address (no HTTP parser, no policy, no JWT). What
fastguard serve costs above it is the price of its parser, policies and checks.

    python -m bench.side_minimal PORT
"""

from __future__ import annotations

import asyncio
import sys

import fastguard as fg

ALLOW = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
DENY = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
LIMITER = fg.RateLimiter("1000000000/second", algorithm="fixed_window")


class Minimal(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            at = head.lower().find(b"x-forwarded-for: ")
            key = head[at + 17:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None] if at >= 0 else b""
            self.transport.write(ALLOW if LIMITER.hit(key).allowed else DENY)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Minimal, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
