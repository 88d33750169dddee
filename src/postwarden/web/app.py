"""The application factory: one FastAPI app holding the engine and settings it was given."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from postwarden import __version__, errors
from postwarden.settings import Settings
from postwarden.web import api, providers, schemas, track, ui, webhooks, webhooks_ui


class BodyLimit:
    """Refuse a request body over the limit with 413 before reading it all."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(self.limit)(scope, receive, send)
        seen = 0

        async def limited() -> dict[str, object]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))  # type: ignore[arg-type]
            if seen > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(self.limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"the request body is larger than {limit} bytes"}, 413)


_BASE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
_CSP = (
    # The UI's own pages: its stylesheet, no script at all, nothing from elsewhere. Inline
    # style attributes (the chart bars' widths) are allowed, <style> elements are not.
    "default-src 'none'; style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_CSP_TRACKING = (
    # /t/ pages (unsubscribe) carry their small stylesheet inline.
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_NO_CSP = ("/docs", "/redoc")
"""FastAPI's API documentation pages load their script from a CDN: no CSP there."""


def security_headers(path: str) -> dict[str, str]:
    """The headers every answer carries: no framing (clickjacking), no MIME sniffing, no
    Referer beyond this site, and a Content-Security-Policy that runs no script."""
    if path.startswith(_NO_CSP):
        return dict(_BASE_HEADERS)
    csp = _CSP_TRACKING if path.startswith("/t/") else _CSP
    return {**_BASE_HEADERS, "Content-Security-Policy": csp}


class SecurityHeaders:
    """Add :func:`security_headers` to every HTTP answer that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = security_headers(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def wants_html(request: Request) -> bool:
    """A browser's request outside the JSON API: its errors are pages, not JSON."""
    path = request.url.path
    if path == "/v1" or path.startswith("/v1/"):
        return False
    return "text/html" in request.headers.get("accept", "")


def create_app(
    settings: Settings, engine: Engine, secret: bytes, wake: Callable[[], None] = lambda: None
) -> FastAPI:
    app = FastAPI(
        title="Postwarden",
        version=__version__,
        description="Send notifications and see what became of each one.",
        responses=schemas.REFUSALS,
        # Operation ids are the functions' names (send_message, get_message...): stable, and
        # what generated clients call their methods.
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.secret = secret
    app.state.wake = wake

    @app.exception_handler(errors.PostwardenError)
    async def _known(request: Request, exc: errors.PostwardenError) -> Response:
        if wants_html(request):
            return ui.error_page(request, api.status_of(exc), exc.message)
        return api.error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if wants_html(request):
            if any(e.get("loc", ("",))[0] == "path" for e in exc.errors()):
                return ui.error_page(request, 404, ui.NO_SUCH_NUMBER)  # /messages/abc
            return ui.error_page(request, 422, "; ".join(_problems(exc, words=True)))
        return JSONResponse(
            {
                "detail": "; ".join(_problems(exc)) or "invalid request",
                "errors": jsonable_errors(exc),
            },
            422,
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        if wants_html(request) and not 300 <= exc.status_code < 400:
            default = HTTPStatus(exc.status_code).phrase
            text = exc.detail if exc.detail and exc.detail != default else None
            return ui.error_page(request, exc.status_code, text, exc.headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(UnicodeEncodeError)
    async def _unstorable(request: Request, exc: UnicodeEncodeError) -> Response:
        if wants_html(request):
            return ui.error_page(request, 422, api.unstorable(exc))
        return api.unstorable_response(exc)

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> Response:
        """The answer to a fault (Starlette logs it and re-raises after this answer): a page
        or JSON, never a bare "Internal Server Error", with the usual headers."""
        headers = security_headers(request.url.path)
        if wants_html(request):
            return ui.error_page(request, 500, headers=headers)
        detail = "Postwarden failed to answer; the error is in its log"
        return JSONResponse({"detail": detail}, 500, headers=headers)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(api.router)
    webhooks.install(app)  # /v1/webhooks, and the spec's "webhooks" section
    app.include_router(providers.router, responses=schemas.refused(404, 409))
    track.install(app)  # /t/ (tracking routes) and /v1 engagement API
    ui.install(app)
    webhooks_ui.install(app)
    body_limit = settings.max_message_bytes * 2  # base64 attachments and JSON around them
    app.add_middleware(BodyLimit, limit=body_limit)
    app.add_middleware(api.MessageFastPath, state=app.state, limit=body_limit)
    app.add_middleware(SecurityHeaders)
    # Outermost: the scheme and client address as the trusted proxies say (Secure cookies,
    # the sign-in rate limit); from anyone else the headers are ignored.
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app


def _problems(exc: RequestValidationError, *, words: bool = False) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        if words and loc[:1] in (["query"], ["path"]):
            loc = loc[1:]  # a page's visitor knows no "query"
        where = ".".join(loc)
        problems.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return problems


def _operation_id(route: APIRoute) -> str:
    return route.name


def jsonable_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()
    ]
