"""gunicorn settings: `gunicorn -c gunicorn.conf.py "app:create_app()"`.

Inference is CPU-bound, so one worker process per core; each loads the models itself (no
--preload: TensorFlow deadlocks after fork, and per-worker loading does not depend on LiteRT
being fork-safe). Threads let a worker read one upload while another request is in the model.
Override with the usual gunicorn flags or GUNICORN_CMD_ARGS, e.g. --bind 0.0.0.0:8000.
"""

import os
import sys

bind = os.environ.get("HEMATOVISION_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 2))
worker_class = "gthread"
threads = 4  # per worker; the model itself runs one request at a time per worker
timeout = 120  # a worker silent this long is restarted (a 100-image batch fits well inside)
# Seconds to finish in-flight requests on restart or shutdown, as long as `timeout`: a part of
# 100 images sent while others upload takes tens of seconds, and one cut off is lost unlogged.
graceful_timeout = 120
keepalive = 5  # seconds an idle keep-alive connection stays open
max_requests = 10000  # recycle workers now and then, bounding slow memory growth
max_requests_jitter = 1000  # so the workers do not all restart at once
preload_app = False
accesslog = "-"
# gunicorn's default line, and how long the request took (ms): a slow upload is then seen.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms'
errorlog = "-"
# No `gunicornc` control socket: we do not use it, and every instance on a host would share
# its one default path (the last started takes it, the first stopped deletes it).
control_socket_disable = True

# One interpreter thread per worker: the workers already use every core, more threads per
# worker would only fight over them. Set before the workers fork, so they inherit it.
os.environ.setdefault("HEMATOVISION_LITERT_THREADS", "1")


def post_worker_init(worker):
    """The app's own log lines (a refused request's reason, a disk that refused a write) go
    where gunicorn's error log goes, with its time, level and pid format, not bare to stderr."""
    import logging

    app_log = logging.getLogger("hematovision")
    app_log.handlers = list(worker.log.error_log.handlers)
    app_log.setLevel(logging.INFO)
    app_log.propagate = False


def on_starting(server):
    """Check the models once, in a throwaway process, before any worker starts.

    A missing or corrupt model then stops gunicorn with one clear message, instead of a
    traceback from every worker; the master itself stays free of the model runtime. A reload
    (HUP) is checked the same way first, and refused if the models would not load.
    """
    check = check_models()
    if check.returncode != 0:
        server.log.error(check.stderr.strip() or f"app.py --check failed ({check.returncode})")
        sys.exit(check.returncode)
    server.log.info(check.stdout.strip())
    reload, served = server.reload, [first_line(check.stdout)]

    # gunicorn stops the running workers on a reload whatever the new ones meet; a model folder
    # left half copied would otherwise take the whole service down.
    def reload_if_the_models_load():
        check = check_models()
        if check.returncode == 0:
            server.log.info(check.stdout.strip())
            if first_line(check.stdout) != served[0]:  # a model gone, the default another
                server.log.warning("the models served change on this reload: were %s; are %s",
                                   served[0].removeprefix("ok: "),
                                   first_line(check.stdout).removeprefix("ok: "))
                served[0] = first_line(check.stdout)
            return reload()
        problem = what_went_wrong(check)
        server.log.error("reload refused, the running workers keep serving the models they "
                         "loaded: %s Mend it (python app.py --check, with the service's settings, "
                         "says when they would load), then reload again.", problem)

    server.reload = reload_if_the_models_load


def check_models():
    """`python app.py --check` run in a process of its own, as finished; given up after
    CHECK_SECONDS (a folder on a hung network share), since the master manages no worker
    while it waits."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    command = [sys.executable, os.path.join(here, "app.py"), "--check"]
    try:
        # In the master's working directory, the workers' own: relative folders in the
        # settings are read from it.
        return subprocess.run(command, capture_output=True, text=True, timeout=CHECK_SECONDS)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", (
            f"error: loading the models (app.py --check) did not finish in {CHECK_SECONDS} s."))
    except OSError as exc:  # no process to be had (a process limit, no memory)
        return subprocess.CompletedProcess(command, 126, "", (
            f"error: the model check (app.py --check) could not be started: {exc}."))


def first_line(text: str) -> str:
    """`app.py --check`'s first line: the models served and the default one."""
    return (text.strip().splitlines() or [""])[0]


def what_went_wrong(check) -> str:
    """A failed check's reason: its `error:` line (the runtime may have logged lines before
    it), else its last line (a traceback's), else its exit status."""
    lines = [line.strip() for line in check.stderr.splitlines() if line.strip()]
    said = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return (said or lines or [f"exit status {check.returncode}"])[-1]


CHECK_SECONDS = 120  # a check loads each model once: seconds, unless its folder hangs


def post_fork(server, worker):
    """A worker started while the service runs (on a reload, a recycle, or in place of one that
    died) that cannot load the models stands by, answering 503 and trying again
    (hematovision/web/standby.py): gunicorn stops every worker when one fails to boot."""
    from hematovision.card import ModelLoadError
    from hematovision.web.standby import Standby, reason

    load = worker.load_wsgi

    def load_or_stand_by():
        try:
            load()
        except Exception as exc:  # any: one worker failing to boot stops them all
            worker.log.error("this worker cannot load the models, and answers 503 until it "
                             "can: %s", reason(exc), exc_info=not isinstance(exc, ModelLoadError))
            worker.wsgi = Standby(worker.app.wsgi, reason(exc))

    worker.load_wsgi = load_or_stand_by
