"""The application factory: one FastAPI app holding the engine and settings it was given."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from starlette.types import ASGIApp, Receive, Scope, Send

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


def create_app(
    settings: Settings, engine: Engine, secret: bytes, wake: Callable[[], None] = lambda: None
) -> FastAPI:
    app = FastAPI(
        title="Postwarden",
        version=__version__,
        description="Send notifications and see what became of each one.",
        # Operation ids are the functions' names (send_message, get_message...): stable, and
        # what generated clients call their methods.
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.secret = secret
    app.state.wake = wake

    @app.exception_handler(errors.PostwardenError)
    async def _known(_: Request, exc: errors.PostwardenError) -> JSONResponse:
        return api.error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
            problems.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
        return JSONResponse(
            {"detail": "; ".join(problems) or "invalid request", "errors": jsonable_errors(exc)},
            422,
        )

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(api.router, responses=schemas.ERRORS)
    webhooks.install(app)  # /v1/webhooks, and the spec's "webhooks" section
    app.include_router(providers.router, responses=schemas.ERRORS)
    track.install(app)  # /t/ (tracking routes) and /v1 engagement API
    ui.install(app)
    webhooks_ui.install(app)
    body_limit = settings.max_message_bytes * 2  # base64 attachments and JSON around them
    app.add_middleware(BodyLimit, limit=body_limit)
    app.add_middleware(api.MessageFastPath, state=app.state, limit=body_limit)
    return app


def _operation_id(route: APIRoute) -> str:
    return route.name


def jsonable_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()
    ]
