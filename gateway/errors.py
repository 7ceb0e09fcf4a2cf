"""Gateway error types and their OpenAI-shaped JSON bodies.

Every failure the hot path can meet is one of these types; `error_response_parts` turns any exception
into (status, headers, body) so no traceback ever reaches a client.
"""
from __future__ import annotations

import orjson


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> list[tuple[bytes, bytes]]:
        return []

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: object) -> None:
        # Same answer for "unknown" and "not allowed for this key": do not reveal which models exist.
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.", param="model")


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    """The request body did not arrive in time. The connection is closed with the answer: the rest of the body
    may still be on its way, and the next request could not be told from it."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"connection", b"close")]


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(max(1, int(self.retry_after_s + 0.999))).encode())]


class UpstreamError(GatewayError):
    """Base for failures talking to an upstream; `retryable` drives retries, fallback and the breaker."""

    retryable = True


class UpstreamConnectError(UpstreamError):
    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class UpstreamBadResponse(UpstreamError):
    status = 502
    type = "upstream_error"
    code = "upstream_bad_response"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class UpstreamStatus(UpstreamError):
    """The upstream answered with an error status; an OpenAI error body is passed through unchanged, any
    other body (an HTML page, vLLM's flat {"message": ...}, nothing) is wrapped into one."""

    def __init__(self, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.retryable = status >= 500 or status == 429
        self.raw, self.content_type = _openai_error(status, body, content_type)

    def body(self) -> bytes:
        return self.raw


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "unavailable"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _openai_error(status: int, body: bytes, content_type: bytes) -> tuple[bytes, bytes]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return body, content_type
    message = doc.get("message") if isinstance(doc, dict) else None
    if not isinstance(message, str) or not message:
        message = f"upstream answered {status}"
    type_ = "invalid_request_error" if status < 500 else "upstream_error"
    return error_body(message, type_, None, None), b"application/json"


def error_response_parts(exc: BaseException) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) for any exception; unknown ones become a bare 500 without details."""
    if isinstance(exc, UpstreamStatus):
        return exc.status, [(b"content-type", exc.content_type)], exc.raw
    if isinstance(exc, GatewayError):
        return exc.status, [(b"content-type", b"application/json"), *exc.headers()], exc.body()
    return 500, [(b"content-type", b"application/json")], error_body(
        "internal error in the gateway", "server_error", None, "internal_error"
    )
