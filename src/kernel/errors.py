"""One JSON error shape for the whole API: ``{"type", "code", "detail", "errors"?}``.

Contexts raise ``DomainError`` subclasses from their services; this module is the one
place that turns any exception into a response, so views never build error bodies.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import csrf, defaults
from rest_framework import exceptions, status
from rest_framework.response import Response

from kernel import metrics


class DomainError(Exception):
    """A business rule said no. Subclasses set the status, code and default detail."""

    status_code: ClassVar[int] = status.HTTP_400_BAD_REQUEST
    code: ClassVar[str] = "domain_error"
    default_detail: ClassVar[str] = "The request could not be completed."
    headers: ClassVar[dict[str, str]] = {}  # sent with the error response (WWW-Authenticate, Allow)

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.default_detail
        self.extra = extra
        super().__init__(self.detail)


class NotFoundError(DomainError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"
    default_detail = "Not found."


class ConflictError(DomainError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"
    default_detail = "The resource is in a state that does not allow this."


def error_body(
    *, status_code: int, code: str, detail: str, errors: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "validation_error" if errors else ("server_error" if status_code >= 500 else "client_error"),
        "code": code,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    body.update(extra)
    return body


def _headers(exc: DomainError) -> dict[str, str]:
    """The error's own headers; a 429 or 503 whose ``retry_after`` (whole seconds) is known
    says so in ``Retry-After`` too."""
    wait = exc.extra.get("retry_after")
    retry = {"Retry-After": str(int(wait))} if isinstance(wait, int) and exc.status_code in (429, 503) else {}
    return {**exc.headers, **retry}


def error_response(exc: DomainError) -> JsonResponse:
    """A domain error as a plain Django response, for views outside DRF (the SSE stream)."""
    body = error_body(status_code=exc.status_code, code=exc.code, detail=exc.detail, **exc.extra)
    return JsonResponse(body, status=exc.status_code, headers=_headers(exc))


def _flatten(detail: Any, attr: str | None = None) -> list[dict[str, Any]]:
    """Turn DRF's nested ValidationError detail into a flat list of field errors."""
    if isinstance(detail, dict):
        out: list[dict[str, Any]] = []
        for key, value in detail.items():
            name = str(key) if attr is None else f"{attr}.{key}"
            out.extend(_flatten(value, None if key == "non_field_errors" else name))
        return out
    if isinstance(detail, list):
        out = []
        for index, item in enumerate(detail):
            if isinstance(item, (dict, list)):
                out.extend(_flatten(item, f"{attr}.{index}" if attr else str(index)))
            else:
                out.extend(_flatten(item, attr))
        return out
    return [{"attr": attr, "code": getattr(detail, "code", "invalid"), "detail": str(detail)}]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        metrics.DOMAIN_ERRORS.labels(status=str(exc.status_code), code=exc.code).inc()
        return Response(
            error_body(status_code=exc.status_code, code=exc.code, detail=exc.detail, **exc.extra),
            status=exc.status_code,
            headers=_headers(exc),
        )
    if isinstance(exc, RequestDataTooBig):
        exc = exceptions.APIException("Request body is too large.")
        exc.status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
        exc.default_code = "body_too_large"
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    # Imported here: rest_framework.views loads the authentication classes, which import
    # services, which import this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # unexpected: Django's 500 handler (JSON for the API, logged) takes it
    assert isinstance(exc, exceptions.APIException)
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body(
            status_code=response.status_code,
            code="invalid",
            detail="The request is invalid.",
            errors=_flatten(exc.detail),
        )
    else:
        code = exc.get_codes()
        detail = exc.detail
        response.data = error_body(
            status_code=response.status_code,
            code=code if isinstance(code, str) else exc.default_code,
            detail=str(detail),
        )
        wait = getattr(exc, "wait", None)
        if isinstance(exc, exceptions.Throttled) and wait is not None:
            response.data["retry_after"] = int(-(-wait // 1))
    return response


def json_error(request: HttpRequest, *, status_code: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse(error_body(status_code=status_code, code=code, detail=detail), status=status_code)


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return json_error(request, status_code=404, code="not_found", detail="Not found.")


def handler500(request: HttpRequest) -> JsonResponse:
    return json_error(request, status_code=500, code="server_error", detail="Internal server error.")


# Errors Django answers before any DRF view runs (a Host not allowed, too many query
# parameters, a CSRF failure on a plain Django view such as the SSE one) are JSON like the
# rest of the API. The admin keeps Django's HTML pages.


def _is_admin(request: HttpRequest) -> bool:
    return request.path.startswith("/admin/")


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_admin(request):
        return defaults.bad_request(request, exception or Exception())
    return json_error(request, status_code=400, code="bad_request", detail="The request is malformed.")


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_admin(request):
        return defaults.permission_denied(request, exception or Exception())
    return json_error(
        request, status_code=403, code="permission_denied", detail="You do not have permission to perform this action."
    )


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW. API clients authenticate with a bearer key and never hold a CSRF
    token: a failure means the method is not one the view serves with a key."""
    if _is_admin(request):
        return csrf.csrf_failure(request, reason)
    return json_error(request, status_code=403, code="csrf_failed", detail="CSRF verification failed.")
