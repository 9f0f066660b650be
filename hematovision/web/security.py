"""Response headers, the CSRF token of the HTML forms, and the session secret.

CSRF: a random token kept in the signed session cookie and echoed by every form; a POST whose
token does not match is refused. This is ~20 lines, so no extra dependency (Flask-WTF) is
needed. The JSON API is exempt: it reads no cookie and changes no stored state, so a forged
cross-site request can only make a browser pay for a classification it never sees.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from flask import Flask, abort, request, session
from werkzeug.wrappers import Response

from hematovision.card import ModelLoadError
from hematovision.web import setting_name

CSRF_FIELD = "csrf_token"
CSRF_MESSAGE = "The form has expired or was not sent from this site. Reload the page and try again."
# No inline script or style anywhere: scripts and styles come from /static only. Images may be
# blob: URLs (previews of the files chosen in the upload form) or data: URLs (Bootstrap's CSS
# draws its small icons as inline SVG).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # for browsers that predate frame-ancestors
    "Referrer-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def init_app(app: Flask) -> None:
    if not app.config.get("SECRET_KEY"):
        path = Path(app.config["SECRET_KEY_FILE"])
        try:
            app.config["SECRET_KEY"] = load_or_create_secret(path)
        except OSError as exc:
            raise ModelLoadError(f"{setting_name('SECRET_KEY_FILE')}: cannot read or create "
                                 f"{path} ({exc.strerror or exc}).") from None
        if not app.config["SECRET_KEY"]:  # a file emptied by a full disk, or made by hand
            raise ModelLoadError(
                f"{setting_name('SECRET_KEY_FILE')}: {path} is empty. Delete it, and a new key "
                "is made at the next start (forms open in browsers then ask to be reloaded).")
    app.after_request(add_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token


def add_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def csrf_token() -> str:
    """The session's form token, created on first use (templates call this)."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def check_csrf() -> None:
    """Refuse a form POST whose token is missing or not this session's (a before_request hook)."""
    if request.method != "POST":
        return
    expected = session.get(CSRF_FIELD)
    sent = request.form.get(CSRF_FIELD, "")
    # Compared as bytes: compare_digest refuses str with non-ASCII characters (a TypeError,
    # so a 500) and a forged form may send any.
    if not expected or not hmac.compare_digest(str(expected).encode(), sent.encode()):
        abort(400, description=CSRF_MESSAGE)


def load_or_create_secret(path: Path) -> str:
    """A secret shared by all workers and kept across restarts, so sessions stay valid.

    Created once with a hard link, which fails if the file exists: two workers starting together
    both end up reading the one complete file.
    """
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()
