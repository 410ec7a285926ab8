"""The HTTP faces of the historic web services: REST/JSON and SOAP 1.1 twins, and the WSDL,
over any `HistoricOperations` (the mock's historic platform, the gateway's legacy front),
callers decided by any `HistoricAuthenticator`: every implementation serves the same faces.

Routes (``<Service>`` one of `OPERATIONS`):

* ``POST /mss-msg-services/services/<Service>/rest/v1/<op>``: ``{"<op>Input": {...}}`` in
  (an empty body or ``{}`` is an empty input), ``{"<op>Output": {...}}`` out;
* ``POST .../<Service>/soap/v1/<op>`` and ``POST .../<Service>/soap/v1`` (dispatched on the
  body element, the address the WSDL gives): see `historic_soap` for the envelope;
* ``GET .../<Service>/soap/v1?wsdl`` (also ``.../soap/v1/<op>?wsdl``): the service's WSDL
  (`historic_wsdl`), its ``soap:address`` the serving base URL (`public_url`, else the
  request's own base URL).

Statuses: success 200; authentication refused 403 with ``X-ErrorCode`` (and the error in
the body: REST error object, SOAP fault); OTP sent 401 with ``X-OTP-Required``; REST
functional error 400 and technical error 500, body
``{"error": {"type", "code", "message"}}``; every SOAP fault 500 (SOAP 1.1 §6.2); an
unknown service or operation 404 ``{"detail": ...}`` on REST, a ``soap:Client`` fault
on SOAP. Bodies are capped (`max_body`, 25 MiB by default: code 39, read no further than
the cap, Content-Length checked first) and JSON nesting is capped (code 36).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from gateway.mss import historic_soap as soap
from gateway.mss.historic_ws import (
    CONTENT_TOO_LARGE,
    FIELD_MISSING,
    INVALID_FORMAT,
    OPERATIONS,
    SESSION_COOKIE,
    Authenticated,
    AuthRefused,
    HistoricError,
    HistoricOperations,
    OtpRequired,
)
from gateway.mss.historic_wsdl import build_wsdl

log = logging.getLogger(__name__)

PREFIX = "/mss-msg-services/services"
DEFAULT_MAX_BODY = 25 * 1024 * 1024
MAX_SOFTWARE = 64  # characters of NUMHOMOLOGATION
MAX_JSON_DEPTH = 32
SOAP_CONTENT_TYPE = "text/xml; charset=utf-8"
FUNCTIONAL_STATUS, TECHNICAL_STATUS = 400, 500
TECHNICAL_ERROR = 1  # the code of TECHNIQUE errors (DOMAIN.md names none)


class HistoricAuthenticator(Protocol):
    """Who calls: the `Authenticated` caller of a request, or `AuthRefused` (403 with
    ``X-ErrorCode``) or `OtpRequired` (401); `session_lifetime` is the Max-Age of the
    session cookie handed out when `Authenticated.new_session` is set."""

    @property
    def session_lifetime(self) -> int: ...

    async def authenticate(self, request: Request) -> Authenticated: ...


def build_historic_router(
    operations: HistoricOperations,
    auth: HistoricAuthenticator,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    public_url: str | None = None,
    require_software: bool = True,
) -> APIRouter:
    """The historic web services over `operations`, callers decided by `auth`.
    `public_url` is the base the WSDL advertises (default: the request's own base URL).
    `require_software`: every call names its software's approval number in
    ``NUMHOMOLOGATION`` (28 without it, 36 when it is not a short printable label), as on
    the historic platform; checked once the caller is authenticated, so that a refused
    login keeps its X-ErrorCode."""
    router = APIRouter(include_in_schema=False)

    def software_error(request: Request) -> HistoricError | None:
        if not require_software:
            return None
        value = request.headers.get("numhomologation", "").strip()
        if not value:
            return HistoricError(FIELD_MISSING, "en-tête NUMHOMOLOGATION manquant")
        if len(value) > MAX_SOFTWARE or not value.isprintable():
            return HistoricError(INVALID_FORMAT, "en-tête NUMHOMOLOGATION invalide")
        return None

    @router.post(PREFIX + "/{service}/rest/v1/{operation}")
    async def rest(service: str, operation: str, request: Request) -> Response:
        if operation not in OPERATIONS.get(service, ()):
            return JSONResponse({"detail": f"unknown operation {service}/{operation}"}, 404)
        try:
            who = await auth.authenticate(request)
        except AuthRefused as exc:
            return _rest_error(HistoricError(exc.code, exc.reason), 403, _refused(exc))
        except OtpRequired as exc:
            return JSONResponse(
                {"otpRequired": {"channel": exc.channel, "expiresIn": exc.expires_in}},
                401,
                _otp_headers(exc),
            )
        try:
            if (unnamed := software_error(request)) is not None:
                raise unnamed
            payload = _json_input(await _read_body(request, max_body), operation)
            output = await _call(operations, service, operation, who, payload)
        except HistoricError as exc:
            status = FUNCTIONAL_STATUS if exc.kind == "FONCTIONNELLE" else TECHNICAL_STATUS
            response = _rest_error(exc, status, _closing(exc))
        else:
            response = JSONResponse({f"{operation}Output": output})
        _set_session(response, who, request, auth.session_lifetime)
        return response

    async def soap_call(service: str, operation: str | None, request: Request) -> Response:
        if service not in OPERATIONS or (
            operation is not None and operation not in OPERATIONS[service]
        ):
            return _fault(HistoricError(INVALID_FORMAT, f"unknown operation in {service}"))
        try:
            who = await auth.authenticate(request)
        except AuthRefused as exc:
            error = HistoricError(exc.code, exc.reason)
            return _fault(error, status=403, headers=_refused(exc))
        except OtpRequired as exc:
            return Response(str(exc), 401, _otp_headers(exc), media_type="text/plain")
        try:
            if (unnamed := software_error(request)) is not None:
                raise unnamed
            named, payload = soap.parse_request(await _read_body(request, max_body))
            if operation is not None and named != operation:
                raise HistoricError(INVALID_FORMAT, f"body element is not {operation}Input")
            if named not in OPERATIONS[service]:
                raise HistoricError(INVALID_FORMAT, f"unknown operation {service}/{named}")
            output = await _call(operations, service, named, who, payload)
        except HistoricError as exc:
            response = _fault(exc, headers=_closing(exc))
        else:
            response = _soap_answer(service, named, output)
        _set_session(response, who, request, auth.session_lifetime)
        return response

    @router.post(PREFIX + "/{service}/soap/v1")
    async def soap_endpoint(service: str, request: Request) -> Response:
        return await soap_call(service, None, request)

    @router.post(PREFIX + "/{service}/soap/v1/{operation}")
    async def soap_operation(service: str, operation: str, request: Request) -> Response:
        return await soap_call(service, operation, request)

    def wsdl(service: str, request: Request) -> Response:
        if service not in OPERATIONS or "wsdl" not in request.query_params:
            return JSONResponse({"detail": "Not Found"}, 404)
        base = (public_url or str(request.base_url)).rstrip("/")
        address = f"{base}{PREFIX}/{service}/soap/v1"
        return Response(build_wsdl(service, address), media_type=SOAP_CONTENT_TYPE)

    @router.get(PREFIX + "/{service}/soap/v1")
    async def service_wsdl(service: str, request: Request) -> Response:
        return wsdl(service, request)

    @router.get(PREFIX + "/{service}/soap/v1/{operation}")
    async def operation_wsdl(service: str, operation: str, request: Request) -> Response:
        if operation not in OPERATIONS.get(service, ()):
            return JSONResponse({"detail": "Not Found"}, 404)
        return wsdl(service, request)

    return router


async def _call(
    operations: HistoricOperations,
    service: str,
    operation: str,
    who: Authenticated,
    payload: dict[str, Any],
) -> dict[str, Any]:
    """Run the operation; anything but a `HistoricError` becomes a technical error."""
    caller = who.caller
    try:
        output = await operations.call(service, operation, caller, payload)
    except HistoricError as exc:
        log.info(
            "historic_ws.refused",
            extra={"operation": f"{service}/{operation}", "code": exc.code, "kind": exc.kind},
        )
        raise
    except Exception:
        log.exception("historic_ws.failed", extra={"operation": f"{service}/{operation}"})
        raise HistoricError(TECHNICAL_ERROR, "erreur technique", "TECHNIQUE") from None
    log.info(
        "historic_ws.call",
        extra={
            "operation": f"{service}/{operation}",
            "idnat": caller.idnat,
            "software": caller.software,
            "trusted_gateway": caller.trusted_gateway,
        },
    )
    return output


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 39 past `limit` bytes; never more than `limit` is kept.

    Past the cap the rest is read and discarded, up to as much again, so that the client
    gets the answer rather than a reset; a body declared larger still is refused at once.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HistoricError(INVALID_FORMAT, "invalid Content-Length")
        if int(declared) > 2 * limit:
            raise HistoricError(CONTENT_TOO_LARGE, f"request larger than {limit} bytes")
    body, seen = bytearray(), 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > 2 * limit:
            break
        if seen <= limit:
            body += chunk
    if seen > limit:
        raise HistoricError(CONTENT_TOO_LARGE, f"request larger than {limit} bytes")
    return bytes(body)


def _json_input(body: bytes, operation: str) -> dict[str, Any]:
    """The content of ``{"<op>Input": {...}}``; an empty body or ``{}`` is an empty input."""
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise HistoricError(INVALID_FORMAT, "malformed JSON") from None
    if _depth(document) > MAX_JSON_DEPTH:
        raise HistoricError(INVALID_FORMAT, "JSON nested too deeply")
    if not isinstance(document, dict) or set(document) - {f"{operation}Input"}:
        raise HistoricError(INVALID_FORMAT, f'expected {{"{operation}Input": {{...}}}}')
    payload = document.get(f"{operation}Input") or {}
    if not isinstance(payload, dict):
        raise HistoricError(INVALID_FORMAT, f"{operation}Input must be an object")
    return payload


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _soap_answer(service: str, operation: str, output: dict[str, Any]) -> Response:
    """The SOAP answer; an output out of the WSDL's schema is the implementation's bug,
    answered as a technical fault rather than with XML a schema-driven client rejects."""
    try:
        body = soap.response(operation, output)
    except soap.OutOfSchema:
        log.exception("historic_ws.out_of_schema", extra={"operation": f"{service}/{operation}"})
        return _fault(HistoricError(TECHNICAL_ERROR, "erreur technique", "TECHNIQUE"))
    return Response(body, media_type=SOAP_CONTENT_TYPE)


def _rest_error(
    error: HistoricError, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"type": error.kind, "code": error.code, "message": error.message}}
    return JSONResponse(body, status, headers)


def _fault(
    error: HistoricError, *, status: int = 500, headers: dict[str, str] | None = None
) -> Response:
    body = soap.fault(error.code, error.message, error.kind)
    return Response(body, status, headers, media_type=SOAP_CONTENT_TYPE)


def _refused(exc: AuthRefused) -> dict[str, str]:
    log.info("historic_ws.auth_refused", extra={"code": exc.code, "reason": exc.reason})
    return {"X-ErrorCode": str(exc.code)}


def _otp_headers(exc: OtpRequired) -> dict[str, str]:
    return {"X-OTP-Required": exc.channel, "WWW-Authenticate": f'OTP channel="{exc.channel}"'}


def _closing(error: HistoricError) -> dict[str, str] | None:
    """An oversized body may be partly unread: the connection cannot carry another."""
    return {"Connection": "close"} if error.code == CONTENT_TOO_LARGE else None


def _set_session(response: Response, who: Authenticated, request: Request, lifetime: int) -> None:
    """Hand out the session opened by a successful OTP (even if the operation failed)."""
    if who.new_session is None:
        return
    response.set_cookie(
        SESSION_COOKIE,
        who.new_session.token,
        max_age=lifetime,
        path="/mss-msg-services",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
