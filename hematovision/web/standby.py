"""What a gunicorn worker serves when it cannot load the models while the service runs.

gunicorn starts workers long after its start: on a reload (HUP), when one is recycled
(`max_requests`) and when one dies. If such a worker cannot build the app (a model folder half
copied, say), gunicorn's answer to a worker that fails to boot is to stop every worker and
exit, the ones serving well included. A worker in standby stays up instead: it answers 503, a
page saying to send again shortly, or JSON with the reason for the API (so a monitor on
/api/health sees why), and tries to build the app again now and then, serving it from the
first try that succeeds.
"""

import json
import logging
import threading
import time
from collections.abc import Callable

from hematovision.card import ModelLoadError
from hematovision.web.security import HEADERS

log = logging.getLogger(__name__)

RETRY_SECONDS = 10  # between tries to build the app: a load takes a few seconds of a core


def reason(exc: Exception) -> str:
    """What a failed build says: a ModelLoadError's own words; anything else (a half-written
    file read as something it is not, a typo in instance/config.py) named with its kind."""
    return str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"


class Standby:
    """A WSGI app answering 503 (why, and when to try again) until `build` returns the app."""

    def __init__(self, build: Callable[[], Callable], problem: str,
                 clock: Callable[[], float] = time.monotonic):
        self.build = build
        self.problem = problem
        self.clock = clock
        self.app = None
        self.tried = clock()
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        app = self.app or self.try_again()
        if app is not None:
            return app(environ, start_response)
        return self.unavailable(environ, start_response)

    def try_again(self):
        """The app if it builds now; None while the last try is recent or another thread is
        trying (its requests are answered at once rather than queued behind a load)."""
        if self.clock() - self.tried < RETRY_SECONDS or not self.lock.acquire(blocking=False):
            return None
        try:
            if self.app is None:
                self.tried = self.clock()
                try:
                    self.app = self.build()
                except Exception as exc:  # whatever stopped the first build may stop this one
                    self.problem = reason(exc)
                    log.error("still cannot load the models (trying again in %d s): %s",
                              RETRY_SECONDS, self.problem,
                              exc_info=not isinstance(exc, ModelLoadError))
                else:
                    log.warning("the models load again: this worker serves them")
            return self.app
        finally:
            self.lock.release()

    def unavailable(self, environ, start_response):
        wait = max(1, round(RETRY_SECONDS - (self.clock() - self.tried)))
        if environ.get("PATH_INFO", "").startswith("/api/"):
            body = json.dumps({"status": "models cannot be loaded", "problem": self.problem,
                               "retry_after_seconds": wait}).encode()
            kind = "application/json"
        else:
            # The reason names server folders and files: for the log and the health check,
            # not for whoever opens a page.
            body = PAGE.format(wait=wait).encode()
            kind = "text/html; charset=utf-8"
        start_response("503 Service Unavailable", [
            ("Content-Type", kind), ("Content-Length", str(len(body))),
            ("Retry-After", str(wait)), ("Cache-Control", "no-store"), *HEADERS.items()])
        return [body]


PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>HematoVision is not available</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body>
<main>
<h1>HematoVision cannot classify images just now</h1>
<p id="standby-problem">This part of the service could not load its models. Images you sent
just now were not stored: send them again in {wait} seconds. Batches stored before are kept.</p>
<p>If this page stays, tell whoever runs HematoVision: the service log and /api/health say
why.</p>
</main>
</body>
</html>
"""
