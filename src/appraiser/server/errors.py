"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the SDK's status codes.

The `openai` SDK maps 400 → BadRequestError, 401 → AuthenticationError, 404 → NotFoundError, 409 →
ConflictError, 413/422 → APIStatusError / UnprocessableEntityError, 429 → RateLimitError (it retries those,
honouring Retry-After). Bad input never becomes a 500: a 500 here means a bug of ours, and even then the
body has this shape and carries the request id, not a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from appraiser.data.io import DataError

log = logging.getLogger("appraiser.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


def _printable(text: str) -> str:
    """Text that always encodes: a lone surrogate in an echoed id, model name or key shows escaped instead of
    failing the response."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def lone_surrogate(value: Any) -> str | None:
    """Where in a decoded JSON value a string holds a lone UTF-16 surrogate (JSON allows "\\ud800"), or None.
    Such a string cannot be encoded: in a prompt it breaks the tokenizer, in an error message or a stored
    field it breaks the response. A loop, not recursion: a body may nest deeper than Python's stack."""
    todo: list[tuple[str, Any]] = [("", value)]
    while todo:
        path, v = todo.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return (path[:200] + "…" if len(path) > 200 else path) or "the body"
            continue
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for key, inner in items:
            shown = _printable(str(key))
            where = f"{path}.{shown}" if path else shown
            todo += [(where, key), (where, inner)]
    return None


class TextBody(BaseModel):
    """A request body whose every string is valid Unicode: one with a lone surrogate is a 400 naming the
    field, before anything reads, stores or echoes it."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        if (where := lone_surrogate(data)) is not None:
            raise ValueError(f"{where} is not valid Unicode text (it holds a lone surrogate)")
        return data


class OpenAIError(Exception):
    """Raise anywhere in a route to answer with this status and an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    message, param = _printable(message), None if param is None else _printable(param)
    return {
        "error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param, "code": code}
    }


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status, headers=headers)


def _union_tag(part: object) -> bool:
    """Pydantic names the member of a union that failed in `loc` ("int", "literal['auto']",
    "function-after[...]"): a name of its validator, not of the request's parameter."""
    return isinstance(part, str) and (part in ("int", "float", "str", "bool", "dict", "list", "none") or "[" in part)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errs = exc.errors()
    if not errs:
        return "invalid request", None
    first = errs[0]
    loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path") and not _union_tag(x)]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request.", None
    msg = first.get("msg", "invalid value")
    return (f"{param}: {msg}" if param else msg) + (f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""), param


def install(app: FastAPI) -> None:
    """Register the handlers that give every error this shape."""

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param, headers=exc.headers)

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> JSONResponse:
        return error_response(400, str(exc), code="invalid_value")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, code="invalid_request", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"Unknown route {request.method} {request.url.path}"
        return error_response(
            exc.status_code,
            message,
            code="unknown_url" if exc.status_code == 404 else None,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", "-")
        log.exception("request %s failed", rid)
        return error_response(500, f"The server had an error processing request {rid}.", code="server_error")
