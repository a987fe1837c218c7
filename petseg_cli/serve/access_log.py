"""One log line per request, and nothing a client sends can start another: control characters in the
path, query or anything else from a request are written escaped (``\\n`` as ``\\x0a``)."""

from __future__ import annotations

import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("petseg.serve")
access_log = logging.getLogger("petseg.serve.access")

# C0 and C1 control characters, DEL, and Unicode's line and paragraph separators.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with every control character written as ``\\xNN`` (or ``\\uNNNN``): safe in one log line."""
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


def request_line(scope: Scope) -> str:
    query = scope.get("query_string", b"").decode("latin-1")
    return printable(f"{scope['method']} {scope['path']}" + (f"?{query}" if query else ""))


class AccessLog:
    """One line per request: client, method, path, status, bytes sent, milliseconds. An exception that
    escapes the application is logged here with its traceback (the client got a 500 without it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            log.exception("error: internal error on %s", request_line(scope))
            if status is None:
                raise
        finally:
            client = scope.get("client")
            access_log.info(
                "%s %s %s %d bytes %.1f ms",
                f"{client[0]}:{client[1]}" if client else "-", request_line(scope),
                status if status is not None else "-", sent, (time.perf_counter() - started) * 1000,
            )
