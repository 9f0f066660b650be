"""Run the HematoVision web app.

python app.py                                   # development server, http://127.0.0.1:5000
python app.py --check                           # load the models once and exit (0 if usable)
gunicorn -c gunicorn.conf.py "app:create_app()"  # production
"""

import sys

from hematovision.card import ModelLoadError
from hematovision.reference import SETTINGS, UNITS
from hematovision.web import create_app

__all__ = ["create_app"]

if __name__ == "__main__":
    try:
        app = create_app()
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if "--check" in sys.argv[1:]:
        predictors = app.extensions["predictors"]
        print(f"ok: models {', '.join(predictors)}; default {app.config['DEFAULT_MODEL']}")
        # What the models will abstain at, so an ACCURACY_TARGET setting can be checked.
        print("unidentified below: " + "; ".join(
            f"{name} {p.trust.confidence_threshold:g}"
            + (f" (accuracy target {p.trust.target_accuracy:g})"
               if p.trust.target_accuracy is not None else "")
            for name, p in predictors.items()))
        # What the differential's shares are flagged against, so a lab's own setting can be checked.
        for absolute, key in SETTINGS.items():
            unit = UNITS[absolute] + ("" if absolute else
                                      "; beside them, as erythroblasts, per 100 white cells")
            print(f"reference intervals ({unit}): " + ", ".join(
                f"{name} {low:g}-{high:g}" for name, (low, high) in app.config[key].items()))
        sys.exit(0)
    app.run(host="127.0.0.1", port=5000)
