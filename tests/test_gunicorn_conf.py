"""gunicorn.conf.py under a real gunicorn: a model folder broken while the service runs never
takes the service down (a reload onto it is refused; a worker started onto it stands by)."""

import json
import os
from types import SimpleNamespace
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def wait_for(what, seconds=90):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (found := what()):
            return found
        time.sleep(0.3)
    pytest.fail(f"waited {seconds} s for {what.__doc__}")


def workers(master: int) -> set[int]:
    children = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                          if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(master):
            children.add(int(status.parent.name))
    return children


@pytest.fixture
def service(tmp_path, models_root):
    if not Path("/proc/self/status").is_file():
        pytest.skip("finding gunicorn's workers needs /proc")
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = {**os.environ, "HEMATOVISION_MODELS_ROOT": str(models_root),
           "HEMATOVISION_UPLOAD_FOLDER": str(tmp_path / "uploads"),
           "HEMATOVISION_SECRET_KEY_FILE": str(tmp_path / "secret_key"),
           "HEMATOVISION_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def up():
            """gunicorn to answer"""
            assert process.poll() is None, log.read_text()
            try:
                return health(port)[0] == 200
            except OSError:
                return False

        wait_for(up)
        yield process, port, log
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_a_reload_onto_a_broken_model_is_refused_and_a_worker_started_onto_it_stands_by(
        service, models_root):
    process, port, log = service
    model = models_root / "tiny" / "model.tflite"
    whole = model.read_bytes()
    model.write_bytes(whole[:len(whole) // 3])  # an upgrade copied half way
    served_before = workers(process.pid)
    process.send_signal(signal.SIGHUP)

    def refused():
        """the reload to be refused"""
        assert process.poll() is None, log.read_text()[-3000:]  # gunicorn stopped
        return "reload refused, the running workers keep serving" in log.read_text()

    wait_for(refused)
    assert process.poll() is None and workers(process.pid) == served_before
    assert health(port)[0] == 200

    os.kill(served_before.pop(), signal.SIGKILL)  # a worker dies: gunicorn starts another

    def standing_by():
        """the new worker to answer"""
        try:
            return health(port)
        except OSError:
            return None

    status, body = wait_for(standing_by)
    assert process.poll() is None
    assert status == 503 and body["status"] == "models cannot be loaded"
    assert "tiny" in body["problem"] and "cannot load the models, and answers 503" in \
        log.read_text()

    model.write_bytes(whole)  # mended: the worker serves it at its next try

    def serving():
        """the standing-by worker to load the mended model"""
        return health(port)[0] == 200

    wait_for(serving, seconds=60)
    assert process.poll() is None


def settings(monkeypatch):
    """gunicorn.conf.py as gunicorn reads it (its environment default undone after the test)."""
    import importlib.util

    monkeypatch.setenv("HEMATOVISION_LITERT_THREADS", "1")
    spec = importlib.util.spec_from_file_location("gunicorn_settings", ROOT / "gunicorn.conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Master:
    """What the hooks use of gunicorn's arbiter: its log and its reload."""

    def __init__(self):
        self.reloads, self.errors, self.infos = 0, [], []
        self.log = self

    def reload(self):
        self.reloads += 1

    def error(self, message, *args):
        self.errors.append(message % args)

    def info(self, message, *args):
        self.infos.append(message % args)

    def warning(self, message, *args):
        self.errors.append("warning: " + message % args)


def test_a_check_that_hangs_is_given_up_and_the_reload_refused(monkeypatch):
    conf = settings(monkeypatch)
    answers = iter([subprocess.CompletedProcess([], 0, "ok: models tiny", "")])

    def run(command, **kwargs):
        assert kwargs["timeout"] == conf.CHECK_SECONDS
        try:
            return next(answers)
        except StopIteration:
            raise subprocess.TimeoutExpired(command, kwargs["timeout"]) from None

    monkeypatch.setattr(subprocess, "run", run)
    master = Master()
    conf.on_starting(master)
    assert master.infos == ["ok: models tiny"]
    master.reload()
    assert master.reloads == 0 and master.errors == [
        "reload refused, the running workers keep serving the models they loaded: loading the "
        f"models (app.py --check) did not finish in {conf.CHECK_SECONDS} s. Mend it (python "
        "app.py --check, with the service's settings, says when they would load), then reload "
        "again."]


@pytest.mark.parametrize("error, said", [
    (SyntaxError("invalid syntax"), "SyntaxError: invalid syntax"),  # instance/config.py typo
    (OSError(5, "Input/output error"), "OSError: [Errno 5] Input/output error"),
])
def test_a_worker_that_cannot_build_the_app_for_any_reason_stands_by(monkeypatch, error, said):
    """Any error out of a worker's boot stops gunicorn, not a ModelLoadError alone."""
    from hematovision.web.standby import Standby

    def load_wsgi():
        raise error

    logged = []
    worker = SimpleNamespace(load_wsgi=load_wsgi, wsgi=None, app=SimpleNamespace(wsgi=None),
                             log=SimpleNamespace(error=lambda *a, **k: logged.append(a[1])))
    settings(monkeypatch).post_fork(None, worker)
    worker.load_wsgi()
    assert isinstance(worker.wsgi, Standby) and worker.wsgi.problem == said == logged[0]


def test_a_check_that_cannot_be_started_refuses_the_reload(monkeypatch):
    conf = settings(monkeypatch)
    monkeypatch.setattr(conf, "check_models",
                        lambda: subprocess.CompletedProcess([], 0, "ok: models tiny", ""))
    master = Master()
    conf.on_starting(master)
    monkeypatch.undo()  # the real check again, whose process cannot be started

    def cannot_start(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "run", cannot_start)
    master.reload()
    assert master.reloads == 0 and "could not be started: [Errno 11] Resource temporarily " \
        "unavailable." in master.errors[0]


def test_the_refusal_quotes_the_check_s_error_line_not_the_runtime_s_chatter(monkeypatch):
    conf = settings(monkeypatch)
    check = subprocess.CompletedProcess([], 2, "", (
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
        "error: The serving model m/model.tflite is corrupt or incompatible.\n"))
    assert conf.what_went_wrong(check) == (
        "The serving model m/model.tflite is corrupt or incompatible.")
    assert conf.what_went_wrong(subprocess.CompletedProcess([], 1, "", (
        "Traceback (most recent call last):\n  ...\nMemoryError\n"))) == "MemoryError"
    assert conf.what_went_wrong(subprocess.CompletedProcess([], -9, "", "")) == (
        "exit status -9")


def test_a_reload_that_changes_the_models_served_says_so(monkeypatch):
    conf = settings(monkeypatch)
    checks = iter(["ok: models pbc8, wbc4; default wbc4\nversions: ...",
                   "ok: models pbc8, wbc4; default wbc4\nversions: ...",
                   "ok: models pbc8; default pbc8\nversions: ..."])
    monkeypatch.setattr(conf, "check_models",
                        lambda: subprocess.CompletedProcess([], 0, next(checks), ""))
    master = Master()
    conf.on_starting(master)
    master.reload()
    assert master.reloads == 1 and master.errors == []
    master.reload()
    assert master.reloads == 2 and master.errors == [
        "warning: the models served change on this reload: were models pbc8, wbc4; default "
        "wbc4; are models pbc8; default pbc8"]


def test_the_check_reads_relative_folders_from_where_gunicorn_runs(
        monkeypatch, tmp_path, models_root):
    """As the workers do: a service started elsewhere than the app's folder, with
    HEMATOVISION_MODELS_ROOT=models, was checked against the app folder's models/."""
    conf = settings(monkeypatch)
    monkeypatch.chdir(models_root.parent)
    monkeypatch.setenv("HEMATOVISION_MODELS_ROOT", models_root.name)
    monkeypatch.setenv("HEMATOVISION_UPLOAD_FOLDER", "uploads")
    monkeypatch.setenv("HEMATOVISION_SECRET_KEY_FILE", str(tmp_path / "secret_key"))
    check = conf.check_models()
    assert check.returncode == 0, check.stderr[-2000:]
    assert conf.first_line(check.stdout) == "ok: models tiny; default tiny"
