"""The floor for any aiohttp router: a bare pass-through proxy with a key check and nothing else.

One upstream ClientSession without a pool cap, the body forwarded as bytes, JSON answers sent
back in one piece and SSE streamed through chunk by chunk. No parsing, no logging.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

UNAUTHORIZED = b'{"error":{"message":"invalid key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}'


@dataclass(frozen=True)
class FloorConfig:
    upstream: str
    secret: str
    keys: frozenset[str]


SESSION = web.AppKey("session", aiohttp.ClientSession)


def create_app(config: FloorConfig) -> web.Application:
    """The proxy app: GET /health, everything else forwarded to the upstream."""
    app = web.Application(client_max_size=32 * 1024 * 1024)
    upstream_auth = "Bearer " + config.secret

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            app[SESSION] = session
            yield

    async def health(request: web.Request) -> web.Response:
        return web.Response(body=b"{}", content_type="application/json")

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization", "")[7:] not in config.keys:
            return web.Response(status=401, body=UNAUTHORIZED, content_type="application/json")
        body = await request.read()
        headers = {"Authorization": upstream_auth,
                   "Content-Type": request.headers.get("Content-Type", "application/json")}
        url = config.upstream + request.path_qs
        async with request.app[SESSION].request(request.method, url, data=body, headers=headers) as up:
            if up.content_type == "text/event-stream":
                return await _stream(request, up)
            data = await up.read()
            return web.Response(status=up.status, body=data,
                                headers={"Content-Type": up.headers.get("Content-Type", "")})

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def _stream(request: web.Request, up: aiohttp.ClientResponse) -> web.StreamResponse:
    """Copy an SSE answer through as its chunks arrive."""
    response = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    try:
        async for chunk in up.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away; leaving the `async with` closes the upstream request
    return response


async def serve(host: str, port: int, config: FloorConfig) -> None:
    """Serve until cancelled."""
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.floor_proxy --port P --upstream URL --secret S --keys-file F`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--keys-file", required=True, help="One key per line.")
    args = parser.parse_args(argv)
    keys = frozenset(line.strip() for line in Path(args.keys_file).read_text().splitlines() if line.strip())
    config = FloorConfig(upstream=args.upstream.rstrip("/"), secret=args.secret, keys=keys)
    import uvloop

    uvloop.run(serve(args.host, args.port, config))


if __name__ == "__main__":
    main()
