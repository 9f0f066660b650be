"""Run the HematoVision web app.

python app.py                                   # development server, http://127.0.0.1:5000
python app.py --port 8080                       # the same on another port
python app.py --check                           # load the models once and exit (0 if usable)
gunicorn -c gunicorn.conf.py "app:create_app()"  # production
"""

import argparse
import sys

from hematovision.card import ModelLoadError
from hematovision.reference import SETTINGS, UNITS
from hematovision.web import create_app

__all__ = ["create_app"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Start HematoVision's development server (for more than one user: gunicorn, "
                    "as the README's Web app section says).",
        epilog="example: python app.py --port 8080")
    parser.add_argument("--check", action="store_true",
                        help="load the models and settings, print the thresholds and reference "
                             "intervals in use, and exit (0 if usable)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=5000,
                        help="port to listen on (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, not {args.port}")
    try:
        app = create_app()
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print_check(app)
        return 0
    # Werkzeug itself says so, and exits 1, when the port is taken.
    app.run(host=args.host, port=args.port)
    return 0


def print_check(app) -> None:
    """What `--check` prints: the models, what they abstain at and what the differential's
    shares are flagged against, so that a setting can be checked before serving."""
    predictors = app.extensions["predictors"]
    print(f"ok: models {', '.join(predictors)}; default {app.config['DEFAULT_MODEL']}")
    print("versions: " + "; ".join(f"{name} {p.version}" for name, p in predictors.items()))
    print("unidentified below: " + "; ".join(
        f"{name} {p.trust.threshold_text()}" for name, p in predictors.items()))
    for absolute, key in SETTINGS.items():
        unit = UNITS[absolute] + ("" if absolute else
                                  "; beside them, as erythroblasts, per 100 white cells")
        print(f"reference intervals ({unit}): " + ", ".join(
            f"{name} {low:g}-{high:g}" for name, (low, high) in app.config[key].items()))


if __name__ == "__main__":
    sys.exit(main())
