"""The API's edge: what every request passes before routing, authentication or a handler.

:class:`RequestGuard` (pure ASGI middleware, installed by :func:`install_guard`):

* **Bounded bodies.** A body larger than the bound answers 413: at once when
  ``Content-Length`` says so, otherwise as soon as the bytes read pass it, so
  at most the bound is ever held in memory. The bound is
  :attr:`EdgeLimits.anonymous_max_body_bytes` (small) for a request carrying
  no credential at all, :attr:`EdgeLimits.max_body_bytes` otherwise; a
  route may lower it further (the NB-IoT webhook does). Starlette's
  ``RequestBodyLimitResponder`` does the counting, and FastAPI knows its 413.
* **No NUL.** A NUL character in the path, the query string, a header, or
  any string (or key) of a JSON body answers 422, whatever the route: PostgreSQL
  text cannot hold it, and a 500 from the database is the wrong answer to bad
  input. Lone surrogates in JSON strings (``"\\ud800"``, not encodable as
  UTF-8) are refused the same way. Paths under ``raw_body_prefixes`` (the
  webhook, which dead-letters bad bodies itself) are exempt from the body scan.

:func:`validation_error_handler` answers FastAPI's 422 without echoing more
than :data:`ECHO_CHARS` characters of any input (FastAPI's default handler
sends the whole offending value back: 100 MB in, 100 MB out).

Every refusal is counted in ``citybrain_api_rejected_total{reason}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter
from starlette.middleware.body_limit import RequestBodyLimitResponder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ECHO_CHARS",
    "EdgeLimits",
    "EdgeMetrics",
    "RequestGuard",
    "install_guard",
    "short",
    "validation_error_handler",
]

ECHO_CHARS = 64
# Strings PostgreSQL text cannot hold (NUL) or UTF-8 cannot encode (lone surrogates).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Headers whose mere presence makes a request "authenticated enough" for the larger body bound;
# the credential itself is checked later (require(), the webhook's token).
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"x-citybrain-token"})
_SESSION_COOKIE = b"citybrain_session="


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """Bounds applied to every request.

    Attributes:
        max_body_bytes: Largest body read from a request presenting a credential.
        anonymous_max_body_bytes: Largest body read from a request without any credential.
        raw_body_prefixes: Paths whose body the route reads raw (and validates itself):
            not scanned for NUL.
    """

    max_body_bytes: int = 4_194_304
    anonymous_max_body_bytes: int = 16_384
    raw_body_prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.anonymous_max_body_bytes < 1 or self.max_body_bytes < self.anonymous_max_body_bytes:
            raise ValueError("body bounds must be positive, the anonymous one no larger than the other")


class EdgeMetrics:
    """The edge's refusal counter, in the registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rejected = Counter(
            "citybrain_api_rejected_total",
            "Requests refused at the API edge, by reason (body_too_large, nul, validation)",
            ["reason"],
            registry=registry,
        )


def short(value: Any, limit: int = ECHO_CHARS) -> Any:
    """``value`` cut to a short prefix, safe to send back to the caller.

    Strings and bytes keep ``limit`` characters (and say how long they were);
    numbers, booleans and ``None`` pass; anything else is described by its type.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        # Control characters and surrogates are escaped so the answer is clean JSON for any client.
        text = value[:limit].encode("unicode_escape", "backslashreplace").decode("ascii")
        return text if len(value) <= limit else f"{text}… ({len(value)} characters)"
    if isinstance(value, dict):
        return f"<object with {len(value)} keys>"
    if isinstance(value, list | tuple):
        return f"<array of {len(value)} items>"
    return f"<{type(value).__name__}>"


def _error(loc: Iterable[Any], value: str | None, reason: str) -> dict[str, Any]:
    msg = "NUL characters are not accepted" if reason == "nul" else "lone UTF-16 surrogates are not accepted"
    out: dict[str, Any] = {"type": "string_unstorable", "loc": [short(p) for p in loc], "msg": msg}
    if value is not None:
        out["input"] = short(value)
    return out


def _json_strings(doc: Any, loc: tuple[Any, ...] = ("body",)) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(location, string) of every key and string value of a JSON document, depth first, iteratively."""
    stack: list[tuple[tuple[Any, ...], Any]] = [(loc, doc)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            yield where, node
        elif isinstance(node, dict):
            for key, value in node.items():
                yield (*where, key), key
                stack.append(((*where, key), value))
        elif isinstance(node, list):
            stack.extend(((*where, i), v) for i, v in enumerate(node))


def _reason(text: str) -> str | None:
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    return "nul" if found.group() == "\x00" else "surrogate"


def _target_errors(scope: Scope) -> list[dict[str, Any]]:
    """NUL in the path, the query string or a header."""
    errors: list[dict[str, Any]] = []
    path = str(scope.get("path", ""))
    if "\x00" in path:
        errors.append(_error(["path"], path, "nul"))
    query = bytes(scope.get("query_string", b""))
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                errors.append(_error(["query", name], value, "nul"))
    for name, value in scope.get("headers", ()):
        if b"\x00" in value:
            # The value is not echoed: headers carry credentials.
            errors.append(_error(["header", name.decode("latin-1")], None, "nul"))
    return errors


def _body_errors(body: bytes) -> list[dict[str, Any]]:
    """NUL or lone surrogates in a body: raw, or in any string of it as JSON."""
    if b"\x00" in body:
        return [_error(["body"], None, "nul")]
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return []  # not JSON: the route's own parsing answers for it
    errors: list[dict[str, Any]] = []
    for loc, text in _json_strings(doc):
        reason = _reason(text)
        if reason is not None:
            errors.append(_error(loc, text, reason))
            if len(errors) >= 10:
                break
    return errors


def _has_credential(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name in _CREDENTIAL_HEADERS or (name == b"cookie" and _SESSION_COOKIE in value):
            return True
    return False


class RequestGuard:
    """ASGI middleware enforcing :class:`EdgeLimits` and refusing NUL (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: EdgeLimits, metrics: EdgeMetrics) -> None:
        self.app = app
        self.limits = limits
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        errors = _target_errors(scope)
        if errors:
            await self._refuse(scope, receive, send, errors)
            return
        limit = self.limits.max_body_bytes if _has_credential(scope) else self.limits.anonymous_max_body_bytes

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 413:
                self.metrics.rejected.labels("body_too_large").inc()
            await send(message)

        limiter = RequestBodyLimitResponder(self._scan, limit)
        await limiter(scope, receive, counted)

    async def _scan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Inside the body bound: read a body the app will parse, check it, and replay it."""
        path = str(scope.get("path", ""))
        if scope.get("method") in ("GET", "HEAD", "OPTIONS") or path.startswith(self.limits.raw_body_prefixes):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()  # raises the limiter's 413 beyond the bound
            if message["type"] != "http.request":
                # The client left before sending its body: nothing to answer.
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        errors = _body_errors(body) if body else []
        if errors:
            await self._refuse(scope, receive, send, errors)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, errors: list[dict[str, Any]]) -> None:
        self.metrics.rejected.labels("nul").inc()
        await JSONResponse({"detail": errors}, status_code=422)(scope, receive, send)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, with every ``input``, ``loc`` part and ``ctx`` value cut to a short prefix."""
    del request
    assert isinstance(exc, RequestValidationError)
    out = []
    for err in exc.errors():
        item: dict[str, Any] = {
            "type": err.get("type", "value_error"),
            "loc": [short(p) for p in err.get("loc", ())],
            "msg": short(str(err.get("msg", "")), 200),
        }
        if "input" in err:
            item["input"] = short(err["input"])
        ctx = err.get("ctx")
        if isinstance(ctx, dict):
            item["ctx"] = {
                str(k)[:ECHO_CHARS]: short(v if isinstance(v, int | float) else str(v)) for k, v in ctx.items()
            }
        out.append(item)
    return JSONResponse({"detail": out}, status_code=422)


def install_guard(app: FastAPI, limits: EdgeLimits, registry: CollectorRegistry) -> EdgeMetrics:
    """Put :class:`RequestGuard` in front of the app and the short 422 handler in it.

    Call it before any other middleware is added, so that those (the request counter)
    see the guard's refusals too.
    """
    metrics = EdgeMetrics(registry)

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        metrics.rejected.labels("validation").inc()
        return await validation_error_handler(request, exc)

    app.add_middleware(RequestGuard, limits=limits, metrics=metrics)
    app.add_exception_handler(RequestValidationError, handler)
    return metrics
