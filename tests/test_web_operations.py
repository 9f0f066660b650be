"""Running the app for a lab: settings misspelt or mistyped stop it with one message, a disk
that cannot take uploads is a clear 503/507 and shows in /api/health, expired batches go with
no visitor, and a refused request's reason reaches the log."""

import errno
import io
import logging
import os
import re
import time
from pathlib import Path

import pytest

from hematovision.card import ModelLoadError
from hematovision.predictor import Predictor
from hematovision.web import create_app, uploads
from tests.web_helpers import aged, csrf_token, image_bytes, make_app, make_models_root, upload


@pytest.fixture
def environment(monkeypatch, tmp_path, models_root):
    """The app's settings from the environment, as a lab gives them (not `test_config`)."""
    for name in [n for n in os.environ if n.startswith("HEMATOVISION_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HEMATOVISION_MODELS_ROOT", str(models_root))
    monkeypatch.setenv("HEMATOVISION_DEFAULT_MODEL", "tiny")
    monkeypatch.setenv("HEMATOVISION_SECRET_KEY", "from-env")
    monkeypatch.setenv("HEMATOVISION_UPLOAD_FOLDER", str(tmp_path / "up"))
    monkeypatch.setenv("HEMATOVISION_PURGE_IN_BACKGROUND", "false")
    return monkeypatch


def test_a_misspelt_setting_stops_the_app_naming_the_one_meant(environment):
    environment.setenv("HEMATOVISION_RETENTON_SECONDS", "600")
    with pytest.raises(ModelLoadError) as refused:
        create_app()
    assert str(refused.value) == (
        "Unknown setting RETENTON_SECONDS (environment variable HEMATOVISION_RETENTON_SECONDS, "
        "or instance/config.py): did you mean RETENTION_SECONDS? The app's settings are listed "
        "in hematovision/web/__init__.py.")
    environment.delenv("HEMATOVISION_RETENTON_SECONDS")
    environment.setenv("HEMATOVISION_BIND", "0.0.0.0:8000")  # gunicorn.conf.py's, not the app's
    assert create_app().config["RETENTION_SECONDS"] == 3600


@pytest.mark.parametrize("typed, read", [("False", False), ("off", False), ("0", False),
                                         ("false", False), ("Yes", True), ("true", True)])
def test_a_yes_or_no_setting_is_read_as_typed(environment, typed, read):
    environment.setenv("HEMATOVISION_SESSION_COOKIE_SECURE", typed)
    assert create_app().config["SESSION_COOKIE_SECURE"] is read


def test_a_yes_or_no_setting_that_is_neither_is_refused(environment):
    environment.setenv("HEMATOVISION_SESSION_COOKIE_SECURE", "maybe")
    with pytest.raises(ModelLoadError, match=r"The setting SESSION_COOKIE_SECURE \(environment "
                                             r"variable HEMATOVISION_SESSION_COOKIE_SECURE\) "
                                             r"must be true or false, not 'maybe'\."):
        create_app()


def test_an_empty_secret_key_file_stops_the_app(tmp_path, models_root):
    key = tmp_path / "secret_key"
    key.write_text("\n")
    with pytest.raises(ModelLoadError, match=f"{key} is empty. Delete it"):
        make_app(tmp_path, models_root, SECRET_KEY=None, SECRET_KEY_FILE=str(key))


def test_an_upload_folder_that_cannot_be_written_stops_the_app(tmp_path, models_root):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ModelLoadError, match=r"The setting UPLOAD_FOLDER \(environment variable "
                                             r"HEMATOVISION_UPLOAD_FOLDER\): cannot store uploads "
                                             f"in {a_file}"):
        make_app(tmp_path, models_root, UPLOAD_FOLDER=str(a_file))
    make_app(tmp_path, models_root, UPLOAD_FOLDER=str(tmp_path / "new" / "uploads"))
    assert (tmp_path / "new" / "uploads").stat().st_mode & 0o777 == 0o700  # the app's own


def disk_full_after(monkeypatch, writes: int) -> None:
    """Every stored file after the first `writes` fails as on a full disk."""
    original, done = uploads._write_atomic, []

    def write(path, content):
        if len(done) >= writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        done.append(path)
        original(path, content)

    monkeypatch.setattr(uploads, "_write_atomic", write)


@pytest.mark.parametrize("writes", [1, 3])  # an image fails, or the batch's file does
def test_a_full_disk_is_a_507_that_keeps_nothing_of_the_upload(
        client, tmp_path, monkeypatch, caplog, writes):
    kept = upload(client, "tiny", ("old.jpg", image_bytes())).rsplit("/", 1)[1]
    before = sorted(p.name for p in (tmp_path / "uploads").iterdir())
    disk_full_after(monkeypatch, writes)
    response = client.post("/upload", data={"csrf_token": csrf_token(client), "model": "tiny",
                                            "file": [(io.BytesIO(image_bytes(c)),
                                                      f"{i}.jpg") for i, c in enumerate(
                                                          [(200, 60, 60), (60, 60, 200),
                                                           (120, 60, 160)])]})
    assert response.status_code == 507
    html = response.get_data(as_text=True)
    assert "its disk is full. Nothing was changed" in html and "Traceback" not in html
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == before  # no orphans
    assert client.get(f"/batch/{kept}").status_code == 200
    assert "cannot store on POST /upload" in caplog.text and "No space left" in caplog.text


def test_health_says_when_uploads_cannot_be_stored(client, monkeypatch):
    assert client.get("/api/health").status_code == 200
    monkeypatch.setattr(uploads, "writable", lambda folder: "cannot store uploads in x (Read-"
                                                            "only file system).")
    response = client.get("/api/health")
    assert response.status_code == 503
    assert response.get_json()["status"] == "cannot store uploads"
    assert "Read-only file system" in response.get_json()["problem"]


def test_a_purge_the_disk_refuses_is_logged_and_the_page_still_answers(
        tmp_path, models_root, monkeypatch, caplog):
    app = make_app(tmp_path, models_root, PURGE_INTERVAL_SECONDS=0)

    def refused(*args):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(uploads, "purge_expired", refused)
    assert app.test_client().get("/").status_code == 200
    assert "cannot purge expired uploads" in caplog.text


def test_expired_batches_go_with_no_request_at_all(tmp_path, models_root):
    app = make_app(tmp_path, models_root, RETENTION_SECONDS=60, PURGE_INTERVAL_SECONDS=0.2,
                   PURGE_IN_BACKGROUND=True)
    client = app.test_client()
    batch_id = upload(client, "tiny", ("a.jpg", image_bytes())).rsplit("/", 1)[1]
    folder = tmp_path / "uploads"
    aged(folder, batch_id, 120)
    for _ in range(50):  # the thread wakes every second at most
        if not (folder / f"{batch_id}.json").exists():
            break
        time.sleep(0.1)
    assert not (folder / f"{batch_id}.json").exists()
    assert not list(folder.glob("*.jpg"))


def test_a_refused_request_logs_its_reason(client, caplog):
    with caplog.at_level(logging.WARNING):
        response = client.post("/upload", data={"csrf_token": csrf_token(client),
                                                "model": "tiny"})
    assert response.status_code == 400
    assert "400 POST /upload: No file was uploaded" in caplog.text


def test_the_check_names_each_models_version(environment, capsys):
    import app as entry

    assert entry.main(["--check"]) == 0
    version = Predictor(Path(os.environ["HEMATOVISION_MODELS_ROOT"]) / "tiny").version
    assert f"versions: tiny {version}\n" in capsys.readouterr().out


def test_a_reference_interval_for_a_class_no_model_names_stops_the_app(tmp_path, models_root):
    with pytest.raises(ModelLoadError) as refused:
        make_app(tmp_path, models_root, REFERENCE_INTERVALS={"neutrophils": [40, 75]})
    assert ("The setting REFERENCE_INTERVALS (environment variable "
            "HEMATOVISION_REFERENCE_INTERVALS) gives an interval for 'neutrophils', a class that "
            "no model served names: did you mean 'neutrophil'?") in str(refused.value)
    # The catalog's own classes, and those of a model served, take one.
    app = make_app(tmp_path, models_root, REFERENCE_INTERVALS={"neutrophil": [40, 75],
                                                               "basophil": [0, 2]})
    assert app.config["REFERENCE_INTERVALS"]["neutrophil"] == (40, 75)


def test_the_upload_page_listing_this_browsers_batches_is_not_cached(client):
    upload(client, "tiny", ("a.jpg", image_bytes()))
    assert client.get("/").headers["Cache-Control"] == "no-store"


def test_behind_a_proxy_at_a_sub_path_every_address_keeps_its_path_and_scheme(
        tmp_path, models_root):
    client = make_app(tmp_path, models_root, PROXIES=1).test_client()
    proxy = {"X-Forwarded-Prefix": "/hv", "X-Forwarded-Proto": "https",
             "X-Forwarded-Host": "lab.example.org"}
    html = client.get("/", headers=proxy).get_data(as_text=True)
    assert 'action="/hv/upload"' in html and 'href="/hv/static/app.css' in html
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    response = client.post("/upload", headers=proxy, data={
        "csrf_token": token, "model": "tiny", "file": [(io.BytesIO(image_bytes()), "a.jpg")]})
    assert response.status_code == 303
    assert response.headers["Location"].startswith("https://lab.example.org/hv/batch/") or \
        response.headers["Location"].startswith("/hv/batch/")
    docs = client.get("/docs/api", headers=proxy).get_data(as_text=True)
    assert "https://lab.example.org/hv/api/predict" in docs
    # Without the setting, such headers are not believed (anyone may send them).
    plain = make_app(tmp_path, models_root).test_client()
    assert 'action="/upload"' in plain.get("/", headers=proxy).get_data(as_text=True)


def test_a_proxy_count_that_is_not_a_whole_number_is_refused(tmp_path, models_root):
    with pytest.raises(ModelLoadError, match=r"PROXIES \(environment variable "
                                             r"HEMATOVISION_PROXIES\) must be a whole number"):
        make_app(tmp_path, models_root, PROXIES="yes")


def test_a_folder_that_cannot_be_read_is_a_503_saying_so(client, monkeypatch):
    batch_id = upload(client, "tiny", ("a.jpg", image_bytes())).rsplit("/", 1)[1]

    def refused(folder, batch):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(uploads, "load_batch", refused)
    response = client.get(f"/batch/{batch_id}")
    assert response.status_code == 503
    assert ("The server cannot use its upload folder now (Permission denied). Nothing was "
            "changed.") in response.get_data(as_text=True)


def test_an_addition_refused_by_a_full_disk_keeps_none_of_its_images(tmp_path, client,
                                                                     monkeypatch):
    batch_id = upload(client, "tiny", ("a.jpg", image_bytes())).rsplit("/", 1)[1]
    before = sorted(p.name for p in (tmp_path / "uploads").glob("*.jpg"))
    original = uploads._write_atomic

    def write(path, content):
        if path.suffix == ".json":
            raise OSError(errno.ENOSPC, "No space left on device")
        original(path, content)

    monkeypatch.setattr(uploads, "_write_atomic", write)
    response = client.post(f"/batch/{batch_id}/add", data={
        "csrf_token": csrf_token(client),
        "file": [(io.BytesIO(image_bytes((60, 60, 200))), "new.jpg")]})
    assert response.status_code == 507
    assert sorted(p.name for p in (tmp_path / "uploads").glob("*.jpg")) == before


def test_kubernetes_service_variables_do_not_stop_the_app(environment):
    for name, value in [("SERVICE_HOST", "10.0.0.11"), ("SERVICE_PORT", "8000"),
                        ("PORT", "tcp://10.0.0.11:8000"), ("PORT_8000_TCP_ADDR", "10.0.0.11")]:
        environment.setenv(f"HEMATOVISION_{name}", value)
    create_app()


def test_instance_config_may_hold_helpers_but_not_a_misspelt_setting(environment, tmp_path,
                                                                     monkeypatch):
    from flask import Config

    config_py = tmp_path / "config.py"
    original = Config.from_pyfile
    monkeypatch.setattr(Config, "from_pyfile", lambda self, filename, silent=False:
                        original(self, str(config_py), silent))
    config_py.write_text(f"from pathlib import Path\nBASE = Path({str(tmp_path)!r})\n"
                         "UPLOAD_FOLDER = str(BASE / 'uploads')\n")
    environment.delenv("HEMATOVISION_UPLOAD_FOLDER")
    assert create_app().config["UPLOAD_FOLDER"] == str(tmp_path / "uploads")
    config_py.write_text("RETENTION_SECOND = 600\n")
    with pytest.raises(ModelLoadError, match="did you mean RETENTION_SECONDS"):
        create_app()


@pytest.mark.parametrize("key", ["PROPAGATE_EXCEPTIONS", "TRAP_BAD_REQUEST_ERRORS",
                                 "TEMPLATES_AUTO_RELOAD"])
def test_flasks_own_yes_or_no_settings_are_read_as_typed_too(environment, key):
    environment.setenv(f"HEMATOVISION_{key}", "False")
    assert create_app().config[key] is False


def test_a_page_refusing_a_form_or_files_logs_their_first_reason(client, caplog):
    caplog.set_level(logging.WARNING)
    response = client.post("/upload", data={"csrf_token": csrf_token(client), "model": "tiny",
                                            "file": [(io.BytesIO(b"not an image"), "x.jpg"),
                                                     (io.BytesIO(b""), "y.jpg")]})
    assert response.status_code == 400
    assert "400 POST /upload: a file: " in caplog.text and "(and 1 more)" in caplog.text


def test_a_refused_requests_log_line_cannot_be_forged_through_its_path(client, caplog):
    caplog.set_level(logging.WARNING)
    assert client.get("/batch/x%0AERROR%20forged%20line").status_code == 404
    assert not any("\n" in r.getMessage() for r in caplog.records)
    assert "/batch/x\\nERROR forged line" in caplog.text


def test_the_log_keeps_no_value_a_refused_form_quoted(client, caplog):
    caplog.set_level(logging.WARNING)
    batch_id = upload(client, "tiny", ("a.jpg", image_bytes()), ("b.jpg", image_bytes(
        (60, 60, 200)))).rsplit("/", 1)[1]
    response = client.post(f"/batch/{batch_id}/sample", data={
        "csrf_token": csrf_token(client), "sample_id": "H-2026-01234 DOE, Jane (born 1961) 7B",
        "wbc": "qqq7"})  # not hex, so never part of a batch id in the logged path
    assert response.status_code == 400
    assert "sample" in caplog.text and "DOE" not in caplog.text and "qqq7" not in caplog.text


def test_a_helper_of_instance_config_near_a_settings_name_is_not_taken_for_it(
        environment, tmp_path, monkeypatch):
    from flask import Config

    config_py = tmp_path / "config.py"
    original = Config.from_pyfile
    monkeypatch.setattr(Config, "from_pyfile", lambda self, filename, silent=False:
                        original(self, str(config_py), silent))
    config_py.write_text("RETENTION = 1800\nRETENTION_SECONDS = RETENTION\n")
    assert create_app().config["RETENTION_SECONDS"] == 1800
    config_py.write_text("RETENTION_SECOND = 600\n")
    with pytest.raises(ModelLoadError, match="write it in lower case"):
        create_app()


def test_health_wants_room_for_one_upload(client, monkeypatch):
    import shutil

    usage = shutil.disk_usage("/")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2**20))
    response = client.get("/api/health")
    assert response.status_code == 503
    assert response.get_json()["problem"].startswith("only 1.0 MB free in ")
    assert "less than one upload may take (32 MB)" in response.get_json()["problem"]


def test_health_says_a_model_folder_changed_since_it_was_loaded(client, models_root):
    with open(models_root / "tiny" / "trust.npz", "ab") as f:  # calibrated again, say
        f.write(b"\0")
    body = client.get("/api/health").get_json()
    assert body["models_changed_on_disk"] == ["tiny"]
    assert body["status"] == "models changed on disk: reload to serve them"


def test_a_default_model_is_a_folder_name_not_a_path(tmp_path, models_root):
    with pytest.raises(ModelLoadError, match="names '../models/tiny', which is not a model"):
        make_app(tmp_path, models_root, DEFAULT_MODEL="../models/tiny")


def test_a_text_setting_typed_as_digits_is_read_as_typed(environment, tmp_path,
                                                         trusted_model_dir):
    """Flask reads an environment value as JSON: a secret key of digits had been a number the
    session signer could not take (every page a 500), a model folder named by year the number
    2026, loaded beside "2026" a second time."""
    root = make_models_root(tmp_path / "models", trusted_model_dir, names=("tiny", "2026"))
    environment.setenv("HEMATOVISION_MODELS_ROOT", str(root))
    environment.setenv("HEMATOVISION_SECRET_KEY", "8412097735")
    environment.setenv("HEMATOVISION_DEFAULT_MODEL", "2026")
    app = create_app()
    assert app.config["SECRET_KEY"] == "8412097735" and app.config["DEFAULT_MODEL"] == "2026"
    client = app.test_client()
    assert client.get("/").status_code == 200
    assert client.get("/api/health").get_json()["models"] == ["2026", "tiny"]


def test_a_text_setting_that_is_no_text_is_refused(tmp_path, models_root):
    with pytest.raises(ModelLoadError, match=r"SECRET_KEY \(.*\) must be text, not 1234"):
        make_app(tmp_path, models_root, SECRET_KEY=1234)


@pytest.mark.parametrize("typed, read", [("strict", "Strict"), ("Lax", "Lax"), ("NONE", "None")])
def test_the_cookies_same_site_setting_is_checked_at_start(environment, typed, read):
    environment.setenv("HEMATOVISION_SESSION_COOKIE_SAMESITE", typed)
    assert create_app().config["SESSION_COOKIE_SAMESITE"] == read
    environment.setenv("HEMATOVISION_SESSION_COOKIE_SAMESITE", "Strct")
    with pytest.raises(ModelLoadError, match=r"SESSION_COOKIE_SAMESITE \(.*\) must be one of "
                                             r"Strict, Lax, None \(or null\), not 'Strct'"):
        create_app()


@pytest.mark.parametrize("name", ["REFERENCE_INTERVALS__neutrophil", "MAX_FILES__parts"])
def test_a_variable_naming_one_key_of_a_setting_stops_the_app_with_a_message(environment,
                                                                             name):
    """Flask's form for one key of a mapping setting had failed inside Flask with a
    TypeError's traceback: none of the app's settings is a mapping to set a key of."""
    environment.setenv(f"HEMATOVISION_{name}", "[40, 75]")
    with pytest.raises(ModelLoadError, match=f"HEMATOVISION_{name}: give the setting "
                                             f"{name.split('__')[0]} whole"):
        create_app()


def test_an_image_under_a_raised_pixel_limit_is_decoded(tmp_path, models_root):
    """Pillow's own decompression-bomb check (about 179 million pixels) had refused a
    180-million-pixel image first, "too large; the limit is 200,000,000 pixels"."""
    from tests.web_helpers import png_with_size

    client = make_app(tmp_path, models_root, MAX_IMAGE_PIXELS=200_000_000).test_client()
    response = client.post("/api/predict", data={
        "file": (io.BytesIO(png_with_size(15_000, 12_000)), "field.png")})
    error = response.get_json()["results"][0]["error"]
    assert "damaged or truncated" in error  # a header alone: read as far as it goes


def test_an_upload_holds_no_more_images_than_a_batch_may(tmp_path, models_root):
    """MAX_BATCH_IMAGES had been checked on additions only: a form of 3 images made a batch
    of 3 where 2 were allowed."""
    client = make_app(tmp_path, models_root, MAX_BATCH_IMAGES=2).test_client()
    response = client.post("/upload", data={
        "csrf_token": csrf_token(client), "model": "tiny",
        "file": [(io.BytesIO(image_bytes(c)), f"{i}.jpg") for i, c in
                 enumerate([(200, 60, 60), (60, 60, 200), (120, 60, 160)])]})
    assert response.status_code == 400
    assert "A batch holds at most 2 images and this upload has 3" in response.get_data(
        as_text=True)
    assert not list((tmp_path / "uploads").glob("*.json"))
    assert not list((tmp_path / "uploads").glob("*.jpg"))


def test_a_full_temporary_disk_while_an_upload_is_read_is_a_507(client, monkeypatch):
    """Werkzeug spools a file part over 500 KB to the temporary folder: a full disk there had
    been answered 400, "cut short or malformed on the way. Send it again"."""
    import tempfile

    import numpy as np
    from PIL import Image
    from werkzeug import formparser

    class FullDisk(tempfile.SpooledTemporaryFile):
        def rollover(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(formparser, "SpooledTemporaryFile", FullDisk)
    noise = np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "PNG")
    token = csrf_token(client)
    response = client.post("/upload", data={"csrf_token": token, "model": "tiny",
                                            "file": (io.BytesIO(out.getvalue()), "field.png")})
    assert response.status_code == 507 and "disk is full" in response.get_data(as_text=True)


def test_an_upload_is_kept_its_retention_time_whatever_clock_stamped_its_files(
        client, tmp_path, monkeypatch):
    """A purge goes by the files' times: an upload had kept the file server's, which 2 hours
    behind the app's clock made a batch just uploaded look old enough to delete."""
    real = uploads._write_atomic

    def written_by_a_server_2_hours_behind(path, write):
        real(path, write)
        stamp = time.time() - 2 * 3600
        os.utime(path, (stamp, stamp))

    monkeypatch.setattr(uploads, "_write_atomic", written_by_a_server_2_hours_behind)
    location = upload(client, "tiny", ("a.jpg", image_bytes()),
                      ("b.jpg", image_bytes((60, 60, 200))))
    monkeypatch.undo()
    uploads.purge_expired(tmp_path / "uploads", client.application.config["RETENTION_SECONDS"])
    assert client.get(location).status_code == 200
    assert client.get(f"{location}/0/view.jpg").status_code == 200


@pytest.mark.parametrize("folder", ["/", "models", "code", "a model's own"])
def test_an_upload_folder_holding_the_app_or_the_root_stops_the_app(tmp_path, models_root,
                                                                    folder):
    given = {"/": "/", "models": str(models_root), "code": str(Path(__file__).parents[1]),
             "a model's own": str(models_root / "tiny")}
    with pytest.raises(ModelLoadError, match="UPLOAD_FOLDER.*(root|holds the app's code or "
                                             "models|lies among the models)"):
        make_app(tmp_path, models_root, UPLOAD_FOLDER=given[folder])


@pytest.mark.parametrize("typed", ["null", '""'])
def test_a_session_cookie_without_a_name_stops_the_app(environment, typed):
    """HEMATOVISION_SESSION_COOKIE_NAME=null had started the app, every page then a 500."""
    environment.setenv("HEMATOVISION_SESSION_COOKIE_NAME", typed)
    with pytest.raises(ModelLoadError, match="SESSION_COOKIE_NAME .* must be text"):
        create_app()
