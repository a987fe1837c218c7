"""Which Host headers the service answers: loopback names, the address it listens on, and what
``serve.allowed_hosts`` adds. Any other gets 400 (Starlette's ``TrustedHostMiddleware``), so that a web
page on another origin cannot reach a loopback service through DNS rebinding."""

from __future__ import annotations

import ipaddress
import socket

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "[::]")


def as_host_header(host: str) -> str:
    """How a Host header writes ``host``: an IPv6 address in brackets, names in lower case."""
    bare = host.strip("[]")
    try:
        return f"[{bare}]" if ipaddress.ip_address(bare).version == 6 else bare
    except ValueError:
        return host.lower()


def machine_names() -> list[str]:
    """This machine's name and addresses: what clients on the network call a service listening on all
    interfaces (without a network, none)."""
    names = {socket.gethostname(), socket.getfqdn()}
    try:
        for *_, address in socket.getaddrinfo(socket.gethostname(), None):
            names.add(str(address[0]))
    except OSError:
        pass
    return sorted(as_host_header(name) for name in names if name)


def allowed_hosts(host: str, extra: list[str]) -> list[str]:
    """The Host header values answered for a service listening on ``host`` (``--host``)."""
    allowed = [*LOOPBACK_NAMES, as_host_header(host)]
    if host in WILDCARD_ADDRESSES:
        allowed += machine_names()
    allowed += [as_host_header(name) for name in extra]
    return list(dict.fromkeys(allowed))


TRUSTED = "petseg.host_trusted"  # set in the request's scope once the Host header passed


class HostCheck:
    """Starlette's ``TrustedHostMiddleware`` decides which Host headers are answered; a refused one gets
    the body every other 4xx gets (``{"error": "one sentence"}``, 400), not its plain-text one."""

    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        async def trusted(scope: Scope, receive: Receive, send: Send) -> None:
            scope[TRUSTED] = True
            await app(scope, receive, send)

        self.check = TrustedHostMiddleware(trusted, allowed_hosts=hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.check(scope, receive, send)
            return

        async def unless_refused(message: Message) -> None:
            if scope.get(TRUSTED):
                await send(message)

        await self.check(scope, receive, unless_refused)
        if not scope.get(TRUSTED):
            sentence = "The Host header names none of this service's host names; --allow-host (serve.allowed_hosts) adds one."
            await JSONResponse({"error": sentence}, 400)(scope, receive, send)
