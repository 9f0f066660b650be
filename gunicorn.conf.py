"""gunicorn settings: `gunicorn -c gunicorn.conf.py "app:create_app()"`.

Inference is CPU-bound, so one worker process per core; each loads the models itself (no
--preload: TensorFlow deadlocks after fork, and per-worker loading does not depend on LiteRT
being fork-safe). Threads let a worker read one upload while another request is in the model.
Override with the usual gunicorn flags or GUNICORN_CMD_ARGS, e.g. --bind 0.0.0.0:8000.
"""

import os

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
    traceback from every worker; the master itself stays free of the model runtime.
    """
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    check = subprocess.run(
        [sys.executable, os.path.join(here, "app.py"), "--check"],
        cwd=here,
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        server.log.error(check.stderr.strip() or f"app.py --check failed ({check.returncode})")
        sys.exit(check.returncode)
    server.log.info(check.stdout.strip())
