"""What every dashboard page shares: the signed-in caller, the language, the templates, one-time messages."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from gateway.api.dashboard.i18n import LANG_COOKIE, Locale, pick_language
from gateway.api.dashboard.session import COOKIE, Session, SessionCodec
from gateway.api.security import Caller, KeyRing
from gateway.service.facade import Service

__all__ = ["ACTION_ROLES", "Page", "SignedOut", "may", "page_of", "render", "templates"]

PREFIX = "/ui"
FLASH = "mg_flash"
HERE = Path(__file__).parent
templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                        trim_blocks=True, lstrip_blocks=True, enable_async=False,
                        auto_reload=False)  # the templates of the code the process started with, never newer ones

# who may do what in the dashboard (admin may do everything); the server checks it on every post, the pages
# show only the buttons of the caller's role
ACTION_ROLES: dict[str, frozenset[str]] = {
    "disconnect": frozenset({"operator"}), "reconnect": frozenset({"operator"}),
    "emergency-credit": frozenset({"operator"}), "hold": frozenset({"operator"}),
    "release-hold": frozenset({"operator"}), "protect": frozenset(), "unprotect": frozenset(),
    "accept": frozenset({"operator"}), "rebase": frozenset({"operator"}), "swap": frozenset({"provisioning"}),
    "acknowledge": frozenset({"operator"}), "resolve": frozenset({"operator"}),
}


# the pages load nothing from elsewhere and are never framed (an action's button can't be clicked from another site)
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                      "form-action 'self'; base-uri 'none'",
           "X-Frame-Options": "DENY", "Cache-Control": "no-store", "Referrer-Policy": "same-origin",
           "X-Content-Type-Options": "nosniff"}


def may(caller: Caller, action: str) -> bool:
    return caller.role == "admin" or caller.role in ACTION_ROLES[action]


class SignedOut(Exception):
    """No valid session: the page sends the browser to the login page (``next``: back here afterwards)."""

    def __init__(self, next_path: str, message: str = "") -> None:
        super().__init__(next_path)
        self.next_path, self.message = next_path, message


@dataclass
class Page:
    """One request of a signed-in caller."""

    request: Request
    service: Service
    caller: Caller
    session: Session
    locale: Locale
    csrf: str

    def context(self, **values: Any) -> dict[str, Any]:
        return {"caller": self.caller, "csrf": self.csrf, "lang": self.locale.lang, "path": self.request.url.path,
                "full_path": _full_path(self.request), "may": lambda action: may(self.caller, action),
                "flash": _flash(self.request), "tz": str(self.locale.tz), "prefix": PREFIX,
                **self.locale.functions(), **values}


def _full_path(request: Request) -> str:
    query = request.url.query
    return request.url.path + ("?" + query if query else "")


def locale_of(request: Request) -> Locale:
    service: Service = request.app.state.service
    lang = pick_language(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))
    return Locale(lang, service.catalog.site.tz)


async def page_of(request: Request) -> Page:
    """The page's caller from its session cookie (``SignedOut`` without a valid one)."""
    codec: SessionCodec = request.app.state.sessions
    session = codec.read(request.cookies.get(COOKIE))
    if session is None:
        raise SignedOut(_full_path(request), "" if COOKIE not in request.cookies else
                        "Your session has ended; sign in again.")
    keys: KeyRing = request.app.state.keys
    caller = await keys.lookup(session.digest)
    if caller is None:  # the key was removed: its sessions end
        raise SignedOut(_full_path(request), "Your session has ended; sign in again.")
    return Page(request, request.app.state.service, caller, session, locale_of(request),
                session.csrf(codec.secret))


def render(page: Page | None, template: str, /, *, request: Request | None = None, status: int = 200,
           **values: Any) -> HTMLResponse:
    if page is not None:
        context, request = page.context(**values), page.request
    else:
        assert request is not None
        locale = locale_of(request)
        context = {"caller": None, "lang": locale.lang, "path": request.url.path, "full_path": _full_path(request),
                   "flash": None, "prefix": PREFIX, "tz": str(locale.tz), **locale.functions(), **values}
    response = HTMLResponse(templates.get_template(template).render(context), status_code=status, headers=HEADERS)
    if context.get("flash"):
        response.delete_cookie(FLASH, path=PREFIX)
    return response


def _flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH)
    if not raw:
        return None
    try:
        value = json.loads(urllib.parse.unquote(raw))
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        return None
    return {"kind": "error" if value.get("kind") == "error" else "ok", "text": value["text"][:500]}


def redirect(to: str, *, flash: str | None = None, kind: str = "ok") -> Response:
    """303 to ``to`` (a path of the dashboard only), with a message for the next page."""
    response = RedirectResponse(safe_next(to), status_code=303)
    if flash:
        response.set_cookie(FLASH, urllib.parse.quote(json.dumps({"kind": kind, "text": flash})), path=PREFIX,
                            httponly=True, samesite="strict", max_age=60)
    return response


def same_origin(request: Request) -> bool:
    """A post from this site's own pages: a browser names the page's origin, which must be this host (no
    ``Origin``: not a browser's cross-site post; the CSRF token decides)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urllib.parse.urlsplit(origin).netloc == request.headers.get("host", "")


def parse_form(body: bytes) -> dict[str, str]:
    """An urlencoded form (the last value of each field; nothing from a body that isn't one)."""
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return {}
    return dict(pairs)


def safe_next(value: str | None) -> str:
    """A ``next`` target inside the dashboard (never another site)."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX + "/"
