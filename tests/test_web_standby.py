"""A worker that cannot load the models answers 503 saying why, and serves them once they load."""

import json

import pytest

from hematovision.card import ModelLoadError
from hematovision.web.standby import RETRY_SECONDS, Standby


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def call(app, path):
    answered = {}

    def start_response(status, headers):
        answered.update(status=status, headers=dict(headers))

    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, start_response))
    return answered["status"], answered["headers"], body.decode()


def served(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the app"]


def test_a_page_says_why_and_when_to_try_again():
    clock = Clock()
    standby = Standby(lambda: served, "The serving model m/model.tflite is <corrupt>", clock)
    clock.now += 3
    status, headers, body = call(standby, "/batch/0")
    assert status.startswith("503 ") and headers["Retry-After"] == str(RETRY_SECONDS - 3)
    body = " ".join(body.split())
    assert "could not load its models. Images you sent just now were not stored" in body
    assert "model.tflite" not in body and "corrupt" not in body  # server paths: log, health
    assert "Batches stored before are kept" in body and headers["Cache-Control"] == "no-store"
    assert headers["X-Frame-Options"] == "DENY"  # the app's own headers, as on every page
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_the_api_and_health_answer_json_a_monitor_reads():
    standby = Standby(lambda: served, "half copied", Clock())
    status, headers, body = call(standby, "/api/health")
    assert status.startswith("503 ") and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"status": "models cannot be loaded", "problem": "half copied",
                                "retry_after_seconds": RETRY_SECONDS}


def test_it_tries_again_only_after_the_pause_and_serves_the_app_once_it_builds():
    clock, tries = Clock(), []

    def build():
        tries.append(clock.now)
        if len(tries) == 1:
            raise ModelLoadError("still half copied")
        return served

    standby = Standby(build, "half copied", clock)
    clock.now += RETRY_SECONDS - 1
    assert call(standby, "/")[0].startswith("503 ") and tries == []
    clock.now += 1
    status, _, body = call(standby, "/api/health")
    assert status.startswith("503 ") and json.loads(body)["problem"] == "still half copied"
    assert len(tries) == 1
    clock.now += RETRY_SECONDS
    assert call(standby, "/")[::2] == ("200 OK", "the app")
    clock.now += RETRY_SECONDS
    assert call(standby, "/")[2] == "the app" and len(tries) == 2  # built once, kept


def test_a_request_while_another_thread_loads_is_answered_at_once():
    clock = Clock()
    standby = Standby(lambda: pytest.fail("built while another thread was loading"), "x", clock)
    clock.now += RETRY_SECONDS
    with standby.lock:
        assert call(standby, "/")[0].startswith("503 ")


def test_a_retry_that_meets_another_kind_of_error_still_answers_503_naming_it():
    clock = Clock()

    def build():
        raise EOFError("No data left in file")

    standby = Standby(build, "half copied", clock)
    clock.now += RETRY_SECONDS
    status, _, body = call(standby, "/api/health")
    assert status.startswith("503 ")
    assert json.loads(body)["problem"] == "EOFError: No data left in file"
