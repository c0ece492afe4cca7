"""Session control over PhantomLink's REST API (control), sync (Client) and asyncio (AsyncClient).

Both speak the same routes; a token (argument, else PHANTOM_AUTH_TOKEN) goes in an
``Authorization: Bearer`` header. Errors raise PhantomLinkError with the server's error code.
"""
from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlencode

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class PhantomLinkError(Exception):
    """An error answer from the server: HTTP status, error code and message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def token_from(token: str | None) -> str | None:
    return token if token is not None else (os.environ.get("PHANTOM_AUTH_TOKEN") or None)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _result(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        err = (body or {}).get("error", {}) if isinstance(body, dict) else {}
        raise PhantomLinkError(response.status_code, str(err.get("code", "http_error")),
                               str(err.get("message", response.text[:200])))
    return body


def _create_body(options: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in options.items() if v is not None}
    if "code" in body:
        body["custom_code"] = body.pop("code")
    return body


def _requests():
    """(method, path, json body or None) of every call, shared by both clients."""
    return {
        "create_session": lambda **o: ("POST", "/api/sessions/create", _create_body(o)),
        "session": lambda code: ("GET", f"/api/sessions/{code}", None),
        "delete_session": lambda code: ("DELETE", f"/api/sessions/{code}", None),
        "pause": lambda code: ("POST", f"/api/control/{code}/pause", {}),
        "resume": lambda code: ("POST", f"/api/control/{code}/resume", {}),
        "seek": lambda code, packet_id: ("POST", f"/api/control/{code}/seek", {"packet_id": packet_id}),
        "speed": lambda code, speed: ("POST", f"/api/control/{code}/speed", {"speed": speed}),
        "loop": lambda code, loop: ("POST", f"/api/control/{code}/loop", {"loop": loop}),
        "evaluation": lambda code, **q: ("GET", f"/api/sessions/{code}/evaluation"
                                         + (f"?{urlencode(q)}" if q else ""), None),
        "reset_evaluation": lambda code: ("DELETE", f"/api/sessions/{code}/evaluation", None),
        "metadata": lambda: ("GET", "/api/metadata", None),
        "trials": lambda: ("GET", "/api/trials", None),
    }


class Client:
    """Blocking REST client. ``Client("http://127.0.0.1:8000").create_session(lockstep=True)``."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.token = token_from(token)
        self._http = httpx.Client(base_url=self.base_url, headers=_headers(self.token), timeout=timeout)
        for name, build in _requests().items():
            setattr(self, name, self._bind(build))

    def _bind(self, build):
        def call(*args, **kwargs):
            method, path, body = build(*args, **kwargs)
            return _result(self._http.request(method, path, json=body))
        return call

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """The same calls as Client, as coroutines (``await client.create_session(...)``)."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.token = token_from(token)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=_headers(self.token),
                                       timeout=timeout)
        for name, build in _requests().items():
            setattr(self, name, self._bind(build))

    def _bind(self, build):
        async def call(*args, **kwargs):
            method, path, body = build(*args, **kwargs)
            return _result(await self._http.request(method, path, json=body))
        return call

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
