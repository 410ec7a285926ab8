"""FastAPI dependencies: the caller's identity (PSC bearer token) and the services."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from delegation.service import DelegationService
from gateway.runtime.logs import identified
from psc_auth import Identity, TokenError, TokenFailure, TokenValidator

bearer = HTTPBearer(auto_error=False, description="a Pro Santé Connect access token")


def get_service(request: Request) -> DelegationService:
    service: DelegationService = request.app.state.delegations
    return service


def get_validator(request: Request) -> TokenValidator:
    validator: TokenValidator = request.app.state.validator
    return validator


async def current_identity(
    validator: Annotated[TokenValidator, Depends(get_validator)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Identity:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise TokenError(TokenFailure.MALFORMED, "a Bearer token is required")
    identity = await validator.validate(credentials.credentials)
    identified(str(identity.idnat))
    return identity


Service = Annotated[DelegationService, Depends(get_service)]
CurrentIdentity = Annotated[Identity, Depends(current_identity)]
