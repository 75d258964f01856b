"""The endpoint × role table, read from the app itself.

Every API route declares its access rule where it is defined: a
:func:`~citybrain.security.auth.require` dependency (a permission of
:data:`~citybrain.security.identities.PERMISSIONS`) or a
:func:`~citybrain.security.auth.public` marker with the reason it is open.
:func:`route_rules` walks ``app.routes`` and reads those declarations, so the
table in docs/security.md (:func:`markdown_table`) cannot drift from the code:
``tests/integration/test_authz_matrix.py`` compares the two and then asks the
running API, role by role, for 403 or not-403.

Run ``python -m citybrain.security.route_table`` to print the table (that module
builds the app; this one only reads one, so the app may import it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from citybrain.security.auth import PERMISSION_ATTR, PUBLIC_ATTR
from citybrain.security.identities import PERMISSIONS, ROLES

__all__ = [
    "FRAMEWORK_PUBLIC",
    "TABLE_BEGIN",
    "TABLE_END",
    "RouteRule",
    "annotate_openapi",
    "markdown_table",
    "route_rules",
    "undeclared_routes",
]

# Routes FastAPI adds itself: the API's shape, not its data.
FRAMEWORK_PUBLIC: dict[str, str] = {
    "/openapi.json": "the OpenAPI document",
}
TABLE_BEGIN = "<!-- route-table:begin (generated: python -m citybrain.security.route_table) -->"
TABLE_END = "<!-- route-table:end -->"


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One endpoint and who may call it.

    Attributes:
        method: HTTP method.
        path: Path template, as routed.
        permission: The permission ``require()`` checks, or ``None`` for a public route.
        reason: Why a public route is public (empty for protected ones).
    """

    method: str
    path: str
    permission: str | None
    reason: str = ""

    def allows(self, role: str) -> bool:
        """Whether a principal with only this role passes the route's check."""
        return self.permission is None or role in PERMISSIONS[self.permission]


def _walk(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _walk(dep)


def _flat(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(full path, route) of every route, looking inside included routers.

    Newer FastAPI keeps ``include_router`` lazy (an ``_IncludedRouter`` in
    ``app.routes``); its original routes carry the declared dependencies.
    """
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _flat(inner.routes, prefix + str(getattr(context, "prefix", "") or ""))
        else:
            yield prefix + str(getattr(route, "path", "")), route


def _declared(route: APIRoute) -> tuple[list[str], list[str]]:
    permissions: list[str] = []
    reasons: list[str] = []
    for call in _walk(route.dependant):
        permission = getattr(call, PERMISSION_ATTR, None)
        if isinstance(permission, str):
            permissions.append(permission)
        reason = getattr(call, PUBLIC_ATTR, None)
        if isinstance(reason, str):
            reasons.append(reason)
    return permissions, reasons


def undeclared_routes(app: FastAPI) -> list[str]:
    """``METHOD path`` of every route that declares no rule, or contradictory ones."""
    bad: list[str] = []
    for path, route in _flat(app.routes):
        if isinstance(route, APIRoute):
            permissions, reasons = _declared(route)
            if len(set(permissions)) + len(reasons) != 1:
                bad.extend(f"{m} {path}" for m in sorted(route.methods or ()))
        elif path not in FRAMEWORK_PUBLIC:
            bad.append(f"? {path or route!r}")
    return bad


def route_rules(app: FastAPI) -> list[RouteRule]:
    """Every endpoint of the app with its rule, sorted by path then method.

    Raises:
        ValueError: A route declares no rule or more than one (see :func:`undeclared_routes`).
    """
    bad = undeclared_routes(app)
    if bad:
        raise ValueError(f"routes without exactly one access rule: {', '.join(bad)}")
    rules: list[RouteRule] = []
    for path, route in _flat(app.routes):
        if isinstance(route, APIRoute):
            permissions, reasons = _declared(route)
            for method in sorted(route.methods or ()):
                if permissions:
                    rules.append(RouteRule(method, path, permissions[0]))
                else:
                    rules.append(RouteRule(method, path, None, reasons[0]))
        else:
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                rules.append(RouteRule(method, path, None, FRAMEWORK_PUBLIC[path]))
    return sorted(rules, key=lambda r: (r.path, r.method))


def annotate_openapi(app: FastAPI) -> None:
    """Copy each route's rule into its OpenAPI operation as ``x-citybrain-permission``.

    Call it before the app serves its first request (FastAPI caches the document).
    """
    for _, route in _flat(app.routes):
        if isinstance(route, APIRoute):
            permissions, _reasons = _declared(route)
            value = permissions[0] if permissions else "public"
            route.openapi_extra = {**(route.openapi_extra or {}), "x-citybrain-permission": value}


def markdown_table(rules: Iterable[RouteRule]) -> str:
    """The endpoint × role table as Markdown (what docs/security.md holds between the markers)."""
    head = "| method | path | permission | " + " | ".join(ROLES) + " |"
    sep = "|---|---|---|" + "---|" * len(ROLES)
    lines = [head, sep]
    for r in rules:
        rule = f"`{r.permission}`" if r.permission else f"public: {r.reason}"
        cells = " | ".join("✓" if r.allows(role) else "" for role in ROLES)
        lines.append(f"| {r.method} | `{r.path}` | {rule} | {cells} |")
    return "\n".join(lines) + "\n"
