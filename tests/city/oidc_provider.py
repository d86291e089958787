"""A tiny OpenID Connect provider for tests: a test double of the deployment's identity provider (Keycloak is
not on the test machine). It implements what the city relies on, strictly: discovery, the authorization
endpoint (response_type=code, PKCE S256 required, the redirect URI registered), and the token endpoint
(client_secret_basic only, single-use codes, redirect URI and PKCE verifier checked, RFC 6749 4.1.3 and
RFC 7636 4.6). The signed-in user is whoever the test sets in ``provider.user``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Provider:
    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str
    user: dict[str, Any] = field(default_factory=dict)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    wrong_nonce: bool = False

    def id_token(self, grant: dict[str, Any]) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.client_id,
            "azp": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": "not-" + grant["nonce"] if self.wrong_nonce else grant["nonce"],
            **grant["user"],
        }
        head = _b64url(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
        body = _b64url(orjson.dumps(claims))
        sig = hmac.new(self.client_secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64url(sig)}"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/.well-known/openid-configuration")
        async def metadata() -> dict:
            return {
                "issuer": self.issuer,
                "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            }

        @app.get("/authorize")
        async def authorize(request: Request):
            q = request.query_params
            if (
                q.get("response_type") != "code"
                or q.get("client_id") != self.client_id
                or q.get("redirect_uri") != self.redirect_uri
                or q.get("code_challenge_method") != "S256"
                or not q.get("code_challenge")
                or not q.get("state")
                or not q.get("nonce")
                or "openid" not in q.get("scope", "").split()
                or "client_secret" in q
            ):
                return JSONResponse({"error": "invalid_request"}, 400)
            code = secrets.token_urlsafe(24)
            self.codes[code] = {
                "challenge": q["code_challenge"],
                "nonce": q["nonce"],
                "redirect_uri": q["redirect_uri"],
                "user": dict(self.user),
            }
            return RedirectResponse(
                f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}", status_code=302
            )

        @app.post("/token")
        async def token(request: Request):
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            grant_type, code = form.get("grant_type"), form.get("code", "")
            redirect_uri, code_verifier = form.get("redirect_uri"), form.get("code_verifier", "")
            expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
            self.token_requests.append(
                {"url": str(request.url), "basic": request.headers.get("authorization")}
            )
            if request.headers.get("authorization") != expected:
                return JSONResponse({"error": "invalid_client"}, 401)
            grant = self.codes.pop(code, None)  # single use
            if (
                grant_type != "authorization_code"
                or grant is None
                or redirect_uri != grant["redirect_uri"]
                or _b64url(hashlib.sha256(code_verifier.encode()).digest()) != grant["challenge"]
            ):
                return JSONResponse({"error": "invalid_grant"}, 400)
            return {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "id_token": self.id_token(grant),
            }

        return app
