"""Errors answered with an OpenAI-style body, and the handlers that turn every exception into one."""

import json

from pydantic import ValidationError


class APIError(Exception):
    """An error answered with an OpenAI-style body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error",
               413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
               504: "timeout_error"}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    # A message or param may quote the client's text (a schema key with a lone surrogate): escape what UTF-8
    # cannot encode, or rendering the 400 itself fails into a 500.
    return {"error": {"message": _encodable(message), "type": type, "param": _encodable(param), "code": code}}


def _encodable(text: str | None) -> str | None:
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(text, str) else text


def param_name(loc: tuple) -> str | None:
    """A pydantic error location as the OpenAI `param` string: messages[0].content."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


# Pydantic names the union member it tried in error locations ("str", "list[ContentPart]"); users never typed those.
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "function-after", "function-before"}


def validation_error(exc: ValidationError) -> APIError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if p != "body" and not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p)))
    param = param_name(loc)
    where = f"{param}: " if param else ""
    msg = err["msg"].removeprefix("Value error, ")
    return APIError(400, f"{where}{msg}", param=param, code="invalid_value")


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def reply_error(err: APIError):
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(err.message, err.type, err.param, err.code), status_code=err.status,
                        headers=err.headers)


async def send_error(send, err: APIError) -> None:
    """Answer `err` straight on an ASGI `send` (for the middleware, before any route runs)."""
    body = json.dumps(error_body(err.message, err.type, err.param, err.code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install_handlers(app) -> None:
    """Every error, including FastAPI's own and unexpected ones, answered as an OpenAI-style error body."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return reply_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request, exc: RequestValidationError):
        errors = exc.errors()
        err = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = param_name(tuple(p for p in err.get("loc", ()) if p not in ("body", "path", "query")))
        return reply_error(APIError(400, f"{param + ': ' if param else ''}{err.get('msg')}", param=param,
                                    code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code,
                                                                                          str(exc.detail))
        return reply_error(APIError(exc.status_code, message,
                                    type=ERROR_TYPES.get(exc.status_code, "invalid_request_error"),
                                    code={404: "not_found", 405: "method_not_allowed"}.get(exc.status_code),
                                    headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        return reply_error(APIError(500, f"internal error: {type(exc).__name__}", type="server_error",
                                    code="internal_error"))
