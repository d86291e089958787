"""Console sign-in and operator accounts: ``/v1/session`` (sign in, who am I, sign out) and ``/v1/operators``.

The session lives on the server (``platform.sessions``); the browser holds only an HttpOnly, SameSite=Strict
cookie with an opaque id (Secure over https). State-changing calls signed in by the cookie need the session's
CSRF token in ``X-CSRF-Token`` (checked by ``shared.auth.require_scope``). Machine clients keep their API keys.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from services.city import service_auth as service
from services.city import service_oidc as oidc
from services.city.roles import ADMIN_SCOPE, ROLE_SCOPES, ROLES
from services.city.settings import CitySettings
from shared.auth import (
    CSRF_HEADER,
    SESSION_COOKIE,
    ApiError,
    FailedAuthThrottle,
    Principal,
    Session,
    SessionStore,
    check_csrf,
    require_scope,
)

router = APIRouter(prefix="/v1", tags=["sign-in"])
WHO = Depends(require_scope("city:read"))
ADMIN = Depends(require_scope(ADMIN_SCOPE))


def _settings(request: Request) -> CitySettings:
    return request.app.state.ctx.settings  # type: ignore[no-any-return]


def _pool(request: Request) -> Any:
    return request.app.state.ctx.pool


def _oidc_cache(request: Request) -> dict[str, Any]:
    """The OIDC provider's metadata, cached for the life of the app (set by the app's lifespan)."""
    return request.app.state.oidc_cache


class SignInRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=service.MAX_PASSWORD)


def _same_origin(request: Request) -> None:
    """Login CSRF: a sign-in form posted from another site must not sign the browser in as someone else."""
    origin = request.headers.get("origin")
    if request.headers.get("sec-fetch-site") == "cross-site" or (
        origin is not None and urlsplit(origin).netloc != request.headers.get("host", "")
    ):
        raise ApiError(403, "cross_origin", "sign in from the console's own page")


def _secure(request: Request) -> bool:
    chosen = _settings(request).session_cookie_secure
    return request.url.scheme == "https" if chosen is None else chosen


async def _set_session_cookie(request: Request, response: Response, session_id: str) -> None:
    old = request.cookies.get(SESSION_COOKIE)
    if old:  # a new id at every sign-in (no session fixation); the old session ends
        await SessionStore(_pool(request)).end(old)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=_settings(request).session_absolute_seconds,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def _who(principal: Principal, session: Session | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "principal_id": principal.id,
        "username": principal.attributes.get("username"),
        "role": principal.role,
        "scopes": sorted(principal.scopes),
        "via": "session" if session is not None else "api_key",
    }
    if session is not None:
        body.update(
            csrf_token=session.csrf_token,
            csrf_header=CSRF_HEADER,
            expires_at=session.expires_at,
            idle_expires_at=session.idle_expires_at,
        )
    return body


@router.post(
    "/session",
    summary="Sign in with user name and password: sets the session cookie, answers the CSRF token",
)
async def sign_in(request: Request, body: SignInRequest, response: Response) -> dict:
    _same_origin(request)
    ctx = request.app.state.ctx
    throttle: FailedAuthThrottle | None = getattr(ctx, "auth_throttle", None)
    address = request.client.host if request.client is not None else "unknown"
    if throttle is not None:
        await throttle.check(address)
    settings = _settings(request)
    done = await service.sign_in(
        _pool(request),
        body.username,
        body.password,
        idle_seconds=settings.session_idle_seconds,
        absolute_seconds=settings.session_absolute_seconds,
    )
    if done is None:
        if throttle is not None:
            await throttle.failed(address)
        raise ApiError(401, "sign_in_failed", "unknown user name or wrong password")
    await _set_session_cookie(request, response, done.session_id)
    session = await SessionStore(_pool(request)).authenticate(done.session_id)
    assert session is not None
    return _who(session.principal, session)


@router.get("/session", summary="Who is signed in (role, scopes) and, for a session, its CSRF token")
async def who_am_i(request: Request, principal: Principal = WHO) -> dict:
    return _who(principal, getattr(request.state, "session", None))


@router.delete("/session", status_code=204, summary="Sign out: the session ends and the cookie is removed")
async def sign_out(request: Request) -> Response:
    session_id = request.cookies.get(SESSION_COOKIE)
    answer = Response(status_code=204)
    if session_id:
        session = await SessionStore(_pool(request)).authenticate(session_id)
        if session is not None:
            check_csrf(request, session)
            await service.sign_out(_pool(request), session_id, session.principal)
    answer.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request))
    return answer


# OIDC ------------------------------------------------------------------------------------------------------
OIDC_BINDING_COOKIE = "ioc_oidc"
OIDC_PATH = "/v1/session/oidc"


@router.get("/session/providers", summary="How one signs in here: password, and OIDC when configured")
async def providers(request: Request) -> dict:
    settings = _settings(request)
    return {
        "password": True,
        "oidc": {"enabled": oidc.configured(settings), "label": settings.oidc_label, "start": OIDC_PATH},
    }


@router.get(
    "/session/oidc",
    summary="Sign in through the OIDC provider: a redirect to it (authorization code flow with PKCE)",
    status_code=303,
    response_class=RedirectResponse,
    responses={303: {"description": "to the provider's authorization endpoint"}},
)
async def oidc_start(request: Request) -> RedirectResponse:
    settings = _settings(request)
    if not oidc.configured(settings):
        raise ApiError(404, "not_found", "no OIDC provider is configured (IOC_CITY_OIDC_ISSUER)")
    redirect_uri = settings.oidc_redirect_url or str(request.url_for("oidc_callback"))
    started = await oidc.start(_pool(request), settings, _oidc_cache(request), redirect_uri)
    answer = RedirectResponse(started.authorize_url, status_code=303)
    # binds the sign-in to this browser; Lax: it must come back with the provider's top-level redirect
    answer.set_cookie(
        OIDC_BINDING_COOKIE,
        started.binding,
        max_age=int(oidc.PENDING_SECONDS),
        path=OIDC_PATH,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    return answer


@router.get(
    "/session/oidc/callback",
    name="oidc_callback",
    summary="Where the OIDC provider sends the browser back: starts the session, then to the console",
    status_code=303,
    response_class=RedirectResponse,
    responses={303: {"description": "to the console, signed in"}},
)
async def oidc_callback(
    request: Request,
    code: str | None = Query(None, max_length=4096),
    state: str | None = Query(None, max_length=200),
    error: str | None = Query(None, max_length=100, pattern=r"^[A-Za-z0-9_.\-]*$"),
) -> RedirectResponse:
    settings = _settings(request)
    if not oidc.configured(settings):
        raise ApiError(404, "not_found", "no OIDC provider is configured (IOC_CITY_OIDC_ISSUER)")
    if error:
        raise ApiError(401, "oidc_refused", f"the identity provider did not sign the user in ({error})")
    missing = [{"field": f, "reason": "missing"} for f, v in (("code", code), ("state", state)) if not v]
    if missing:
        raise ApiError(422, "invalid_request", "the provider's answer lacks code or state", missing)
    session_id = await oidc.finish(
        _pool(request),
        settings,
        _oidc_cache(request),
        code=str(code),
        state=str(state),
        binding=request.cookies.get(OIDC_BINDING_COOKIE),
    )
    # to the console: the code leaves the address bar (and, with Referrer-Policy no-referrer, goes nowhere)
    answer = RedirectResponse("/", status_code=303)
    await _set_session_cookie(request, answer, session_id)
    answer.delete_cookie(
        OIDC_BINDING_COOKIE, path=OIDC_PATH, httponly=True, samesite="lax", secure=_secure(request)
    )
    return answer


# Operators (administrators only) ---------------------------------------------------------------------------
class OperatorRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(max_length=63)
    display_name: str = Field("", max_length=120)
    role: str = Field(max_length=32, description=f"one of {', '.join(ROLES)}")
    password: str | None = Field(
        None, max_length=service.MAX_PASSWORD, description="None keeps the stored one"
    )


@router.get("/roles", summary="The console's roles and the scopes each holds")
async def roles(principal: Principal = WHO) -> dict:
    return {"items": [{"role": r, "scopes": list(ROLE_SCOPES[r])} for r in ROLES]}


@router.get("/operators", summary="Console accounts, their roles and live sessions (administrators)")
async def operators(request: Request, principal: Principal = ADMIN) -> dict:
    return {"items": await service.list_operators(_pool(request))}


@router.post("/operators", summary="Create or update a console account (administrators; audited)")
async def save_operator(request: Request, body: OperatorRequest, principal: Principal = ADMIN) -> dict:
    if body.password is None and not await service.operator_exists(_pool(request), body.username):
        raise ApiError(
            422,
            "invalid_request",
            "a new operator needs a password",
            [{"field": "password", "reason": "missing"}],
        )
    pid = await service.save_operator(
        _pool(request),
        username=body.username,
        display_name=body.display_name,
        role=body.role,
        password=body.password,
        actor=principal.id,
    )
    return {"principal_id": pid, "username": body.username, "role": body.role}


@router.post(
    "/operators/{principal_id}/disable",
    summary="Disable a console account; its sessions end at once (administrators; audited)",
)
async def disable_operator(
    request: Request, principal_id: str = Path(max_length=100), principal: Principal = ADMIN
) -> dict:
    if principal_id == principal.id:
        raise ApiError(409, "conflict", "an administrator cannot disable their own account")
    await service.disable_operator(_pool(request), principal_id, principal.id)
    return {"principal_id": principal_id, "disabled": True}
