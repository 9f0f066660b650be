"""Error responses: a friendly page in the site layout, or JSON under /api/.

Whatever goes wrong, the client gets a short message and a 4xx/5xx status, never a traceback.
"""

from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

log = logging.getLogger(__name__)

TITLES = {
    400: "The request could not be used",
    404: "Page not found",
    405: "Method not allowed",
    413: "Upload too large",
    500: "Something went wrong on our side",
}


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected_error)


def message_for(error: HTTPException) -> str:
    if isinstance(error, RequestEntityTooLarge):
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        return f"The upload is larger than the limit of {limit / 2**20:g} MB in total."
    if error.code == 404 and error.description == _default_description(error):
        return "There is nothing at this address. Results are deleted after a while."
    if error.code == 500:
        return "The server could not complete the request. Please try again."
    return error.description or ""


def handle_http_error(error: HTTPException):
    code = error.code or 500
    message = message_for(error)
    if request.path.startswith("/api/"):
        return jsonify(error=message), code
    title = TITLES.get(code, error.name)
    return render_template("error.html", code=code, title=title, message=message), code


def handle_unexpected_error(error: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return handle_http_error(InternalServerError())


def _default_description(error: HTTPException) -> str:
    return type(error).description
