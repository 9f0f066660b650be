"""Error responses: a friendly page in the site layout, or JSON under /api/.

Whatever goes wrong, the client gets a short message and a 4xx/5xx status, never a traceback.
"""

from __future__ import annotations

import errno
import logging
import re

from flask import Flask, abort, current_app, g, jsonify, render_template, request
from werkzeug.exceptions import (Gone, HTTPException, InternalServerError, RequestEntityTooLarge,
                                 ServiceUnavailable)

from hematovision.web import models
from hematovision.web.uploads import DamagedBatch

log = logging.getLogger(__name__)
# A quoted value in a message: '...' (Python's repr) or "...", not an apostrophe ("batch's").
QUOTED = re.compile(r"(?<!\w)'[^']*'(?!\w)|(?<!\w)\"[^\"]*\"(?!\w)")

try:  # gunicorn's own errors for a body it cannot parse (a malformed chunk); not on Windows
    from gunicorn.http.errors import ParseException
    BODY_ERRORS: tuple[type[Exception], ...] = (OSError, ParseException)
except ImportError:  # pragma: no cover
    BODY_ERRORS = (OSError,)
BODY_UNREADABLE = ("The request's body could not be read: it was cut short or malformed on the "
                   "way. Send it again.")

TITLES = {
    400: "The request could not be used",
    404: "Page not found",
    405: "Method not allowed",
    410: "These results can no longer be read",
    500: "Something went wrong on our side",
    503: "The server cannot store anything now",
    507: "The server's storage is full",
}
# The disk refused a write: not the request's fault, nor a bug; trying again helps only once
# whoever runs the server has freed or repaired it, which the log and /api/health tell them.
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


class InsufficientStorage(HTTPException):
    """507 (RFC 4918), which Werkzeug has no class for."""
    code = 507
    description = "The server's storage is full."


NOT_READ = ("The server cannot use its upload folder now ({why}). Nothing was changed. Tell "
            "whoever runs the server; then reload this page.")
NOT_STORED = ("The server could not save this: {why}. Nothing was changed, and what was "
              "stored before is kept. Tell whoever runs the server; then send it again.")


def init_app(app: Flask) -> None:
    app.before_request(read_body_first)
    app.after_request(log_refusal)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(DamagedBatch, handle_damaged_batch)
    app.register_error_handler(Exception, handle_unexpected_error)


def log_refusal(response):
    """Log a refused request (4xx) with its reason on the error log: the access log has its
    status only, and a technologist's call to support names what the page said. The reason is
    an error's message (`g.refusal`), else the first a page refused with names (`refused`).
    Control characters are escaped: the path and a file's name are the client's."""
    if 400 <= response.status_code < 500:
        reason = g.get("refusal") or "the page says why"
        log.warning("%s %s %s: %s", response.status_code, request.method,
                    one_line(request.path), one_line(without_values(reason))[:300])
    return response


def refused(files: list[dict] | None = None, forms=()) -> None:
    """Name why a page that answers 4xx itself (a form shown again with its errors, files none
    of which could be used) refused the request, for `log_refusal`: the first reason given."""
    reasons = [f"a file: {f['error']}" for f in files or [] if f.get("error")]
    reasons += [f"{field or 'the form'}: {message}" for form in forms if form is not None
                for field, message in form.errors.items()]
    if reasons:
        more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
        g.setdefault("refusal", reasons[0] + more)


def one_line(text: str) -> str:
    """Text for one log line: each control character (a newline would start a forged line of
    the log) written as its escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def without_values(reason: str) -> str:
    """A reason as the log keeps it: what a message quotes of what was typed or sent (a
    refused sample ID may hold a patient's name, as may a file's) written as '…'."""
    return QUOTED.sub("'…'", reason)


def read_body_first() -> None:
    """Read a POST's form before any check or view does, so that a body the server cannot
    parse is a 400 here instead of a 500 from wherever it was first read (gunicorn raises its
    own ParseException, Werkzeug's development server an OSError). Not for an address that
    has no such route: its answer is the 404 or 405, whatever its body."""
    if request.method == "POST" and request.routing_exception is None:
        try:
            request.form
        except BODY_ERRORS as error:
            # Werkzeug spools a large file to the temporary folder as it reads it: a full or
            # read-only disk there is the server's (507 or 503: handle_unexpected_error).
            if isinstance(error, OSError) and error.errno in FULL + UNWRITABLE:
                raise
            abort(400, description=BODY_UNREADABLE)


def message_for(error: HTTPException) -> str:
    if error.code == 404 and error.description == _default_description(error):
        return "There is nothing at this address."
    if error.code == 500:
        return "The server could not complete the request. Please try again."
    return error.description or ""


def too_large() -> tuple[str, str]:
    """Title and message of a 413, by its cause. Werkzeug raises the same error for a body over
    MAX_CONTENT_LENGTH and, while parsing the form, for more than MAX_FORM_PARTS parts or a text
    field over MAX_FORM_MEMORY_SIZE bytes; only the declared length tells them apart."""
    config = current_app.config
    limit, length = config["MAX_CONTENT_LENGTH"], request.content_length
    size = f"larger than the limit of {limit / 2**20:g} MB in total" if limit else ""
    if size and length is not None and length > limit:
        return "Upload too large", f"The upload is {size}."
    parts, memory = config.get("MAX_FORM_PARTS"), config.get("MAX_FORM_MEMORY_SIZE")
    causes = [f"too many parts (at most {parts:,})" if parts else "",
              f"a text field over {memory:,} bytes" if memory else ""]
    form = " or ".join(c for c in causes if c) or "too many parts"
    if size and length is None:  # sent in chunks: either limit may have been reached
        return "Request too large", f"The upload is {size}, or its form has {form}."
    return "Form too large", (f"The form has {form}: send at most {config['MAX_FILES']} files "
                              "and only the form's own fields.")


def handle_http_error(error: HTTPException):
    code = error.code or 500
    if isinstance(error, RequestEntityTooLarge):
        title, message = too_large()
    else:
        title, message = TITLES.get(code, error.name), message_for(error)
    # Headers the error itself carries, such as a 405's Allow (required by HTTP), are kept;
    # its Content-Type is not, as the body is ours.
    headers = [(k, v) for k, v in error.get_headers() if k.lower() != "content-type"]
    if 400 <= code < 500:
        g.refusal = message
    if request.path.startswith("/api/"):
        return jsonify(error=message), code, headers
    page = render_template("error.html", code=code, title=title, message=message,
                           chosen=chosen_model(error))
    return page, code, headers


def chosen_model(error: HTTPException) -> str | None:
    """The model the refused request chose, for the way back to the upload form; None when
    unknown. Only a form already read counts: reading the body here could raise the error
    being answered again (a 413's form was never read: reading it is what failed) or wait
    until the client hangs up (a body cut short mid-chunk)."""
    form = request.__dict__.get("form")  # where Werkzeug's cached_property keeps a read form
    for values in (request.args, form or {}):
        name = values.get("model", "").strip()
        if name:
            return name if name in models.names() else None
    return None


# Gone, not a 500: trying again cannot help, and what the server keeps of the batch cannot
# be shown by any request; the log names the file for whoever runs the server.
DAMAGED = ("The stored results of this batch cannot be read: their file on the server is "
           "damaged. Nothing else was touched; the batch's images are deleted at the end of "
           "their retention time, as every upload is.")


def handle_damaged_batch(error: DamagedBatch):
    log.error("damaged batch file %s", error)
    return handle_http_error(Gone(description=DAMAGED))


def handle_unexpected_error(error: Exception):
    if isinstance(error, OSError) and error.errno in FULL + UNWRITABLE:
        log.error("cannot store on %s %s: %s", request.method, request.path, error)
        if request.method in ("GET", "HEAD"):  # nothing was sent to store: it was reading
            return handle_http_error(ServiceUnavailable(description=NOT_READ.format(
                why=error.strerror or error)))
        if error.errno in FULL:
            return handle_http_error(InsufficientStorage(description=NOT_STORED.format(
                why="its disk is full")))
        return handle_http_error(ServiceUnavailable(description=NOT_STORED.format(
            why="its upload folder cannot be written")))
    log.exception("unhandled error on %s %s", request.method, request.path)
    return handle_http_error(InternalServerError())


def _default_description(error: HTTPException) -> str:
    return type(error).description
