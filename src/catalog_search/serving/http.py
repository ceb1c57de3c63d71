"""What every response of `catalog-search serve` goes through, whatever the route: body limits and
read deadlines (a half-sent request is cut off), strict JSON (NaN, Infinity and lone surrogates
are 422, never a 500 with the sender's text in the log), security headers, Host checking beyond
loopback, and rate limits. A uvicorn runner with a deadline on request headers, which uvicorn
itself does not have (its keep-alive timer starts only after a first response).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict, deque
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

LOOPBACK = ["127.0.0.1", "localhost", "::1", "[::1]"]
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
                                  b"script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
                                  b"form-action 'self'"),
]


class Guard:
    """Pure ASGI middleware: security headers on every answer; a body over its route's limit gets
    413 (from Content-Length before anything is read, else while reading); a body that stalls for
    `timeout` seconds gets 408; a Host not in `hosts` gets 400 (DNS rebinding, when bound beyond
    loopback)."""

    def __init__(self, app, limits: dict[str, int], default_limit: int, timeout: float, hosts: list[str]):
        self.app, self.limits, self.default_limit, self.timeout = app, limits, default_limit, timeout
        self.hosts = {h.lower() for h in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            await send(message)

        headers = dict(scope.get("headers", []))
        host = headers.get(b"host", b"").decode("latin-1").lower()
        host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if host not in self.hosts:
            return await JSONResponse({"detail": "unknown Host header"}, 400)(scope, receive, send_with_headers)
        limit = next((n for prefix, n in self.limits.items() if scope["path"].startswith(prefix)), self.default_limit)
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await JSONResponse({"detail": f"request body over {limit} bytes"}, 413)(scope, receive,
                                                                                          send_with_headers)
        seen, body_done = 0, False

        async def guarded():
            """The deadline holds while the body arrives; afterwards receive() only waits for a
            disconnect (streaming responses listen for it), which must not time out."""
            nonlocal seen, body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"request body stalled for {self.timeout:g} s") from None
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"request body over {limit} bytes")
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        try:
            return await self.app(scope, guarded, send_with_headers)
        except HTTPException as e:  # raised while a body was read outside a route (e.g. multipart parsing)
            return await JSONResponse({"detail": e.detail}, e.status_code)(scope, receive, send_with_headers)


def strict_json(raw: bytes) -> Any:
    """JSON as the standard says: NaN/Infinity and lone surrogates are refused with 422 (Python's
    json accepts both, and a lone surrogate breaks every later encode of the text)."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    try:
        data = json.loads(raw, parse_constant=refuse)
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError) as e:
        raise HTTPException(422, f"body is not valid JSON: {type(e).__name__}") from None
    return data


def validation_errors(errors: list[dict]) -> JSONResponse:
    """FastAPI's 422 without echoing the input (which may hold what broke the encoder)."""
    return JSONResponse({"detail": [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:200]}
                                    for e in errors[:10]]}, 422)


class RateLimit:
    """At most `per_minute` events per key in any 60 s window (a sliding log, in memory)."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._events: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def hit(self, key: str) -> bool:
        """Record an event for `key`; False (and nothing recorded) when it is over the limit."""
        now = time.monotonic()
        with self._lock:
            events = self._events[key]
            while events and events[0] < now - 60:
                events.popleft()
            if len(events) >= self.per_minute:
                return False
            events.append(now)
            if len(self._events) > 100_000:  # forget idle keys: memory stays bounded
                for k in [k for k, v in self._events.items() if not v or v[-1] < now - 60]:
                    del self._events[k]
            return True


def server(app, host: str, port: int, header_timeout: float, **config: Any):
    """A uvicorn server with a deadline on request headers (slowloris): a connection whose request
    line and headers are not complete `header_timeout` seconds after it opened, or after its
    previous response, is closed. `server(...).run()` serves until Ctrl-C."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._waiting_since_cycle = self.cycle
            self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self._deadline is not None and self.cycle is not self._waiting_since_cycle:
                self._deadline.cancel()  # a request's headers arrived
                self._deadline = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._deadline is None and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", http=HeaderDeadline,
                                         timeout_keep_alive=5, **config))
