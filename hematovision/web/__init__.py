"""The HematoVision web app: `create_app()` builds it, one blueprint per area.

Configuration, lowest to highest priority: the defaults below, `instance/config.py`, then
environment variables `HEMATOVISION_<KEY>` (values parsed as JSON where they parse, e.g.
HEMATOVISION_RETENTION_SECONDS=600). Tests pass `test_config` instead of the last two.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from hematovision.card import ModelLoadError
from hematovision.output import quoted
from hematovision.predictor import MODELS_ROOT
from hematovision.preprocess import MAX_PIXELS, allow_pixels
from hematovision.reference import SETTINGS, intervals
from hematovision.release import app_version
from hematovision.web.forms import plain_text

PREFIX = "HEMATOVISION_"  # of the environment variables that set the app's settings


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app and load its models; raises ModelLoadError if no usable model is found."""
    app = Flask(
        __name__,
        instance_relative_config=True,
        static_folder="../../static",
        template_folder="../../templates",
    )
    app.config.from_mapping(
        SECRET_KEY=None,  # signs the session cookie (CSRF token); None: kept in SECRET_KEY_FILE
        SECRET_KEY_FILE=os.path.join(app.instance_path, "secret_key"),  # created on first start
        MODELS_ROOT=str(MODELS_ROOT),  # folder of model folders (model_card.json + model.tflite)
        DEFAULT_MODEL=None,  # model used when a request names none; None: wbc4, else the first
        ACCURACY_TARGET=None,  # abstain so accepted cells are right this often (e.g. 0.95);
        #   None: each model card's own target (see Trust.load)
        LITERT_THREADS=2,  # interpreter threads per process (gunicorn.conf.py sets 1 per worker)
        UPLOAD_FOLDER=os.path.join(app.instance_path, "uploads"),  # stored images and results
        RETENTION_SECONDS=3600,  # stored uploads and results are deleted after this age
        PURGE_INTERVAL_SECONDS=60,  # how often a request checks for expired uploads
        PURGE_IN_BACKGROUND=None,  # also check in a thread, with no request; None: unless tests
        MAX_CONTENT_LENGTH=32 * 2**20,  # bytes per request, all files together (413 above)
        MAX_FILES=100,  # files per request
        MAX_BATCH_IMAGES=1000,  # images one batch may hold, those added to it later included
        MAX_FORM_PARTS=1_000,  # form parts per request, files included (413 above: errors.py)
        MAX_FORM_MEMORY_SIZE=500_000,  # bytes per text field of a form (413 above)
        MAX_IMAGE_PIXELS=MAX_PIXELS,  # width x height per image, checked before decoding
        REFERENCE_INTERVALS=None,  # the lab's {class: [low, high]} in percent of white cells,
        #   replacing the catalog's adult intervals the differential is flagged against
        ABSOLUTE_REFERENCE_INTERVALS=None,  # the same in x 10^9/L, for absolute counts
        LAB_NAME="",  # heads the printed report (the laboratory, its department); "": none
        PROXIES=0,  # reverse proxies in front that set X-Forwarded-For/-Proto/-Host/-Prefix;
        #   their headers are believed (the app's addresses keep the proxy's path and scheme)
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",  # the browser does not send the cookie on foreign POSTs
    )
    if test_config is None:
        defaults = dict(app.config)
        app.config.from_pyfile("config.py", silent=True)
        check_nested(os.environ)
        app.config.from_prefixed_env(PREFIX.rstrip("_"))
        check_names(app.config, defaults)
    else:
        app.config.from_mapping(test_config)
    check_settings(app.config)
    allow_pixels(app.config["MAX_IMAGE_PIXELS"])
    if app.config["PURGE_IN_BACKGROUND"] is None:
        app.config["PURGE_IN_BACKGROUND"] = test_config is None
    # Which code this process runs, read as it starts: a checkout updated under a running app
    # is not what its records name until it restarts.
    app.config["APP_VERSION"] = app_version()
    # Relative folders are taken from the working directory, as on the command line (Flask would
    # resolve them against the package folder when sending files).
    for key in PATH_SETTINGS:
        app.config[key] = os.path.abspath(app.config[key])

    for absolute, key in SETTINGS.items():
        app.config[key] = reference_intervals(key, app.config[key], absolute)

    if app.config["PROXIES"]:
        hops = app.config["PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops,
                                x_prefix=hops)
    # Keep JSON keys in insertion order: "file" first and probabilities in the model's class
    # order, exactly as the predict CLI writes them.
    app.json.sort_keys = False

    from hematovision.web import (api, batch_pages, errors, filters, images, model_pages, models,
                                  pages, review_pages, security, uploads, versions)

    models.init_app(app)
    check_interval_classes(app.config, {c for p in app.extensions["predictors"].values()
                                        for c in p.classes})
    security.init_app(app)
    uploads.init_app(app)
    errors.init_app(app)
    app.register_blueprint(filters.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(batch_pages.bp)
    app.register_blueprint(review_pages.bp)
    app.register_blueprint(images.bp)
    app.register_blueprint(model_pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(versions.bp)
    return app


PATH_SETTINGS = ("MODELS_ROOT", "UPLOAD_FOLDER", "SECRET_KEY_FILE")
# Settings that are text (or None), the app's and Flask's: given in the environment, read as
# typed, as Flask reads a value as JSON first (a key, a model folder or a path of digits, 2026,
# came as a number, which the session signer or the model list cannot take).
TEXT_SETTINGS = (*PATH_SETTINGS, "SECRET_KEY", "DEFAULT_MODEL", "SESSION_COOKIE_NAME",
                 "SESSION_COOKIE_DOMAIN", "SESSION_COOKIE_PATH")
# ... of which these may not be null or empty: the cookie's name has no default to fall back on.
NAMED_SETTINGS = ("SESSION_COOKIE_NAME",)
SAME_SITE = ("Strict", "Lax", "None")  # SESSION_COOKIE_SAMESITE's values (or null: unset)
# Settings that count something (whole numbers above 0) or last some seconds (0 or more). The
# limits a form or request may reach may also be None (null), no limit, as Flask reads them.
COUNT_SETTINGS = ("LITERT_THREADS", "MAX_FILES", "MAX_BATCH_IMAGES", "MAX_IMAGE_PIXELS",
                  "MAX_CONTENT_LENGTH", "MAX_FORM_PARTS", "MAX_FORM_MEMORY_SIZE",
                  "MAX_COOKIE_SIZE")
SECONDS_SETTINGS = ("RETENTION_SECONDS", "PURGE_INTERVAL_SECONDS")
HOPS_SETTINGS = ("PROXIES",)  # whole numbers, 0 or more
# Variables of the prefix read by something other than the app's settings.
OTHER_VARIABLES = ("BIND",)  # gunicorn.conf.py's address
# ... and those Kubernetes gives every container for a Service named "hematovision":
# HEMATOVISION_SERVICE_HOST, _SERVICE_PORT(_<NAME>), _PORT(_<port>_<protocol>(_ADDR, ...)).
KUBERNETES_VARIABLE = re.compile(r"SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\w+)?")
# How alike an upper-case name of instance/config.py and a setting must be to be taken for a
# misspelling of it (RETENTON_SECONDS: 0.97), not one of the file's own helpers (RETENTION: 0.69).
MISSPELT = 0.85
# Yes or no, or None for the default's own rule (ours, and Flask's that default so).
YES_NO_SETTINGS = ("PURGE_IN_BACKGROUND", "PROPAGATE_EXCEPTIONS", "TRAP_BAD_REQUEST_ERRORS",
                   "TEMPLATES_AUTO_RELOAD")
# A yes-or-no setting as typed in the environment, where JSON's true and false are the only
# spellings Flask reads as such: "False" stayed a text, which counts as yes.
YES_NO = {"true": True, "yes": True, "on": True, "1": True,
          "false": False, "no": False, "off": False, "0": False}
UNLIMITED_SETTINGS = ("MAX_CONTENT_LENGTH", "MAX_FORM_PARTS", "MAX_FORM_MEMORY_SIZE")
MAX_LAB_NAME_LENGTH = 80


def check_settings(config: dict[str, Any]) -> None:
    """Stop the app (and `app.py --check`) with a message naming a setting of the wrong kind,
    instead of a traceback later or a misleading error (0 interpreter threads read as a
    corrupt model). A folder setting the environment gave as a number (JSON to Flask's
    `from_prefixed_env`: a folder named 5) is the text as typed, as is any text setting."""
    for key in TEXT_SETTINGS:
        value = config.get(key)
        if isinstance(value, (int, float, bool, list, dict)) and f"{PREFIX}{key}" in os.environ:
            config[key] = value = os.environ[f"{PREFIX}{key}"]
        if key in PATH_SETTINGS or (value is None and key not in NAMED_SETTINGS):
            continue  # a path: checked below; None: the default's own rule
        if not isinstance(value, (str, bytes)) or (not value and key in NAMED_SETTINGS):
            raise ModelLoadError(f"{setting_name(key)} must be text, not {quoted(value)}.")
    for key in PATH_SETTINGS:
        value = config[key]
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise ModelLoadError(f"{setting_name(key)} must be a path, not {quoted(value)}.")
    same_site = config.get("SESSION_COOKIE_SAMESITE")
    if same_site is not None:  # Werkzeug would refuse it on every response: a 500 per page
        if not isinstance(same_site, str) or same_site.strip().title() not in SAME_SITE:
            raise ModelLoadError(f"{setting_name('SESSION_COOKIE_SAMESITE')} must be one of "
                                 f"{', '.join(SAME_SITE)} (or null), not {quoted(same_site)}.")
        config["SESSION_COOKIE_SAMESITE"] = same_site.strip().title()
    for key in (*COUNT_SETTINGS, *SECONDS_SETTINGS):
        value = config[key]
        if value is None and key in UNLIMITED_SETTINGS:
            continue
        counts = key in COUNT_SETTINGS
        kinds = (int,) if counts else (int, float)
        lowest = 1 if counts else 0  # 0 seconds: at once (a purge at every request)
        if isinstance(value, bool) or not isinstance(value, kinds) or not (
                lowest <= value < math.inf):
            what = "a whole number above 0" if counts else "a number of seconds, 0 or more"
            raise ModelLoadError(f"{setting_name(key)} must be {what}"
                                 f"{' (or null: no limit)' if key in UNLIMITED_SETTINGS else ''}"
                                 f", not {quoted(value)}.")
    for key in HOPS_SETTINGS:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ModelLoadError(f"{setting_name(key)} must be a whole number, 0 or more, "
                                 f"not {quoted(value)}.")
    # As typed: Flask reads an environment value as JSON first (null, true, 1.50, ["Lab"]).
    name = os.environ.get(f"{PREFIX}LAB_NAME", config["LAB_NAME"])
    try:
        if not isinstance(name, str):
            raise ValueError(name)
        config["LAB_NAME"] = plain_text(name, MAX_LAB_NAME_LENGTH)
    except ValueError:
        raise ModelLoadError(f"{setting_name('LAB_NAME')} must be one line of at most "
                             f"{MAX_LAB_NAME_LENGTH} letters, digits, spaces and punctuation, "
                             f"not {quoted(config['LAB_NAME'])}.") from None


def check_nested(environ: Mapping[str, str]) -> None:
    """Stop with a message for a variable naming one key of a setting (`HEMATOVISION_A__B`),
    which Flask would set into the setting A: none of ours is a mapping to set it into, and
    Flask fails with a TypeError before any check could name it."""
    for name in sorted(environ):
        if name.startswith(PREFIX) and "__" in name[len(PREFIX):]:
            setting = name[len(PREFIX):].split("__")[0]
            raise ModelLoadError(
                f"{name}: give the setting {setting} whole, in one variable {PREFIX}{setting} "
                f"(as JSON where it holds a list or a mapping, e.g. {PREFIX}REFERENCE_INTERVALS="
                "'{\"neutrophil\": [40, 75]}').")


def check_names(config: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Stop with a message naming a setting the app does not have, given in the environment
    (a typo left the default in force unnoticed: HEMATOVISION_RETENTON_SECONDS kept every batch
    an hour) or in instance/config.py where it is that close to one of ours (its other
    upper-case names may be the file's own helpers, such as a folder the settings are built
    from), and read a yes-or-no setting typed as a word ("False", "off")."""
    def not_ours(name: str) -> bool:  # read by something else than the app's settings
        return name in OTHER_VARIABLES or bool(KUBERNETES_VARIABLE.fullmatch(name))

    given = {name[len(PREFIX):] for name in os.environ if name.startswith(PREFIX)}
    given = {name for name in given if not not_ours(name)}
    known = [*defaults, *OTHER_VARIABLES]
    in_file = {name for name in set(config) - set(defaults) - given if not not_ours(name)}
    misspelt = {name for name in in_file
                if difflib.get_close_matches(name, known, n=1, cutoff=MISSPELT)}
    unknown = sorted((given - set(defaults)) | misspelt)
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, known, n=1)
        raise ModelLoadError(
            f"Unknown setting {name} (environment variable {PREFIX}{name}, or instance/config.py)"
            + (f": did you mean {close[0]}?" if close else ".")
            + " The app's settings are listed in hematovision/web/__init__.py"
            + (" (a name of the file's own is taken for a setting only in upper case: write "
               "it in lower case)." if name in misspelt else "."))
    for key, default in defaults.items():
        value = config[key]
        if (isinstance(default, bool) or key in YES_NO_SETTINGS) and not isinstance(
                value, bool) and value is not None:
            if str(value).strip().lower() not in YES_NO:
                raise ModelLoadError(f"{setting_name(key)} must be true or false, "
                                     f"not {quoted(value)}.")
            config[key] = YES_NO[str(value).strip().lower()]


def check_interval_classes(config: dict[str, Any], served: set[str]) -> None:
    """Stop with a message naming a reference interval given for a class that no served model
    names and the catalog does not know: "neutrophils" for "neutrophil" was added beside the
    catalog's interval and flagged nothing, unnoticed."""
    for absolute, key in SETTINGS.items():
        known = set(intervals(None, absolute)) | served
        for name in config[key]:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                raise ModelLoadError(
                    f"{setting_name(key)} gives an interval for {name!r}, a class that no model "
                    f"served names" + (f": did you mean {close[0]!r}?" if close else ".")
                    + f" The classes are {', '.join(sorted(known))}.")


def setting_name(key: str) -> str:
    """A setting as a message names it: its key and the environment variable that sets it."""
    return f"The setting {key} (environment variable {PREFIX}{key})"


def reference_intervals(key: str, value, absolute: bool) -> dict[str, tuple[float, float]]:
    """The setting `key` over the catalog's intervals (`reference.intervals`); a bad one stops
    the app (and `app.py --check`) with a message naming it."""
    try:
        return intervals(value, absolute)
    except ValueError as exc:
        raise ModelLoadError(f"{setting_name(key)}: {exc}") from None
