"""The bare servers rtserver is measured against (run through ``python -m bench._launch``).

``websockets``: a bare ``websockets`` server that decodes each text frame with orjson (the
decoder rtserver uses) and answers ``{"ack": [messageId, ...]}``, so the same client measures
it the same way; nothing is validated or stored.

``starlette``: starlette on uvicorn with rtserver's uvicorn settings (``websockets-sansio``,
httptools, same deflate switch): the same WebSocket endpoint, and ``POST /v1/batch`` that only
reads and decodes the body and answers ``{"success": true}``.

Both answer ``GET /healthz`` (readiness) and stop cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from http import HTTPStatus

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request as WsRequest, Response as WsResponse

from bench._common import BATCH_PATH, HOST

MAX_FRAME_BYTES = 65536  # rtserver's ingest.max_frame_bytes default


def ack(text: str | bytes) -> str:
    """The whole per-message work of a bare server: decode, list the ids, encode the ack."""
    batch = orjson.loads(text)["batch"]
    return orjson.dumps({"ack": [event["messageId"] for event in batch]}).decode()


# --- bare websockets -----------------------------------------------------------------------


async def _ws_handler(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(ack(message))


def _ws_healthz(connection: ServerConnection, request: WsRequest) -> WsResponse | None:
    if request.path == "/healthz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    return None


async def serve_websockets(port: int, deflate: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(
        _ws_handler,
        HOST,
        port,
        compression="deflate" if deflate else None,
        process_request=_ws_healthz,
        max_size=MAX_FRAME_BYTES,
    ):
        await stop.wait()


# --- bare starlette on uvicorn -------------------------------------------------------------


async def _starlette_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(ack(await websocket.receive_text()))
    except WebSocketDisconnect:
        pass


async def _starlette_batch(request: Request) -> JSONResponse:
    orjson.loads(await request.body())
    return JSONResponse({"success": True})


async def _healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok\n")


async def serve_starlette(port: int, deflate: bool) -> None:
    app = Starlette(
        routes=[
            Route("/healthz", _healthz),
            Route(BATCH_PATH, _starlette_batch, methods=["POST"]),
            WebSocketRoute("/v1/ws", _starlette_ws),
        ]
    )
    config = uvicorn.Config(  # as rtserver.app.server_config sets them
        app,
        host=HOST,
        port=port,
        ws="websockets-sansio",
        ws_max_size=MAX_FRAME_BYTES,
        ws_per_message_deflate=deflate,
        log_config=None,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    await uvicorn.Server(config).serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("kind", choices=["websockets", "starlette"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    args = parser.parse_args()
    serve_ = serve_websockets if args.kind == "websockets" else serve_starlette
    asyncio.run(serve_(args.port, args.deflate))


if __name__ == "__main__":
    main()
