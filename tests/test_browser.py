"""A real browser (headless Chromium, Debian's, driven by Selenium) uploads through the form.

Checks what only a browser can: the file picker submits, the CSP lets our scripts run (the
probability bars get their width from app.js) and reports no violation, the pages render.
Skipped, saying why, where Chromium or its driver is not installed (`make browser-deps`).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from werkzeug.serving import make_server

from hematovision.web import uploads
from tests.conftest import make_image
from tests.web_helpers import aged, make_app, make_models_root

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT_COPY = Path("/tmp/hematovision_screenshot.png")  # easy to find after a run

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def base_url(tmp_path, trusted_model_dir):
    """The app on a free loopback port, served by Werkzeug in a thread for this test, on the
    tiny model with a trust layer whose thresholds accept every image (so a label shows)."""
    with serving(tmp_path, trusted_model_dir) as url:
        yield url


@contextlib.contextmanager
def serving(tmp_path, trusted_model_dir, **config):
    """base_url's server, with `config` settings."""
    with served(trusting_app(tmp_path, trusted_model_dir, **config)) as url:
        yield url


def trusting_app(tmp_path, trusted_model_dir, **config):
    """base_url's app: the tiny model with a trust layer that accepts every image."""
    trust = json.loads((trusted_model_dir / "model_card.json").read_text())["trust"]
    trust["confidence_threshold"] = 0.0
    trust["ood"]["threshold"] = 1e12
    models = make_models_root(tmp_path / "models", trusted_model_dir, names=("tiny",),
                              card={"trust": trust})
    return make_app(tmp_path, models, **config)


@contextlib.contextmanager
def served(app):
    """`app` on a free loopback port, served by Werkzeug in a thread; its address."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1100",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, css: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 30).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def click_in_view(browser, element) -> None:
    """Click an element after scrolling it to the window's middle at once: a note above may
    have pushed it to the edge, and Bootstrap's smooth scrolling would still be moving it."""
    browser.execute_script(
        "arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", element)
    element.click()


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def test_upload_through_the_file_picker_shows_the_result(browser, base_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = make_image(tmp_path / "smear cell.jpg", (200, 60, 60), size=(320, 240))
    browser.get(base_url + "/")
    assert "Classify blood cells" in browser.title
    browser.find_element(By.ID, "file").send_keys(str(image))
    assert "smear cell.jpg" in browser.find_element(By.ID, "file-list").text  # app.js ran
    browser.find_element(By.ID, "submit").click()

    label = wait_for(browser, "#predicted-label")
    assert "/batch/" in browser.current_url
    assert label.get_attribute("data-label") in {
        "eosinophil",
        "lymphocyte",
        "monocyte",
        "neutrophil",
    }
    assert "Confidence" in browser.page_source
    bars = browser.find_elements(By.CSS_SELECTOR, ".probabilities .progress-bar")
    assert len(bars) == 4
    widths = [float(b.value_of_css_property("width").removesuffix("px")) for b in bars]
    assert widths[0] > 0 and widths == sorted(widths, reverse=True)
    image_element = browser.find_element(By.CSS_SELECTOR, "img.result-image")
    assert browser.execute_script("return arguments[0].naturalWidth", image_element) == 320

    # The heat map: hidden and not fetched until the switch is turned on.
    heat_map = browser.find_element(By.ID, "heat-map-image")
    assert not heat_map.is_displayed() and not heat_map.get_attribute("src")
    browser.find_element(By.CSS_SELECTOR, "label[for=heat-map-toggle]").click()
    wait_for(browser, "#heat-map-image[src]")
    # Bootstrap makes scrolling smooth: jump instead, so the screenshot is not taken mid-way.
    browser.execute_script(
        "arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", heat_map)
    loaded = WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "const i = arguments[0]; return i.complete && i.naturalWidth", heat_map))
    assert loaded == 224
    assert heat_map.is_displayed()
    # Decoded and painted (two animation frames) before the screenshot.
    browser.execute_async_script(
        "const [image, done] = arguments; image.decode().then(() =>"
        " requestAnimationFrame(() => requestAnimationFrame(() => done(true))))", heat_map)

    left, top, right, bottom = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect(), k = window.devicePixelRatio;"
        "return [r.left * k, r.top * k, r.right * k, r.bottom * k]", heat_map)
    screenshot = tmp_path / "result.png"
    assert browser.save_screenshot(str(screenshot))
    shutil.copy(screenshot, SCREENSHOT_COPY)
    assert screenshot.stat().st_size > 10_000
    # The overlay is in the screenshot, where the page puts it.
    shown = Image.open(screenshot).convert("RGB").crop((left, top, right, bottom))
    shown.save(tmp_path / "heat_map_in_screenshot.png")
    # What the screen shows there is the served overlay, and the overlay is not the bare image.
    with urllib.request.urlopen(heat_map.get_attribute("src"), timeout=30) as response:
        served = Image.open(io.BytesIO(response.read())).convert("RGB")
    bare = Image.open(image).convert("RGB").resize(served.size)
    assert mean_difference(served, bare) > 5
    assert shown.size[0] > 100 and mean_difference(shown, served.resize(shown.size)) < 12

    problems = [
        e["message"]
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" or "Content Security Policy" in e["message"]
    ]
    assert problems == []


def test_batch_upload_shows_the_table_and_differential(browser, base_url, tmp_path):
    from selenium.webdriver.common.by import By

    files = [
        make_image(tmp_path / f"cell{i}.png", c, fmt="PNG")
        for i, c in enumerate([(200, 60, 60), (60, 60, 200), (120, 60, 160)])
    ]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    browser.get(base_url + "/")
    browser.find_element(By.ID, "file").send_keys("\n".join(map(str, [*files, broken])))
    assert browser.find_element(By.ID, "submit-label").text == "Classify 4 images"
    # The form's address names the chosen model: a 413 is refused before the form is read.
    action = browser.find_element(By.ID, "upload-form").get_attribute("action")
    assert action == base_url + "/upload?model=tiny"
    browser.find_element(By.ID, "submit").click()

    wait_for(browser, "#differential")
    rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert len(rows) == 4 and "could not" not in rows[0].text
    assert "not an image" in rows[3].text
    counts = [
        int(td.text)
        for td in browser.find_elements(By.CSS_SELECTOR, "#differential tbody td:nth-of-type(1)")
    ]
    assert sum(counts) == 3
    # Printed, the page is a report: no navigation, buttons or forms; the report line shows.
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    assert not browser.find_element(By.TAG_NAME, "header").is_displayed()
    assert not browser.find_element(By.ID, "csv-link").is_displayed()
    assert not browser.find_element(By.ID, "add-form").is_displayed()
    assert re.search(r"HematoVision 0\.1\.0\S*, model tiny, model version [0-9a-f]{12} "
                     r"\(exported .*\) at an accuracy target of 99 %, batch uploaded",
                     browser.find_element(By.ID, "print-note").text)
    # In the pages' own format and clock (12/7 would read as 12 July in much of the world),
    # September included, which a locale may shorten to "Sept".
    browser.execute_script(
        "const Real = Date; window.Date = class extends Real {"
        " constructor(...a) { super(...(a.length ? a : [Real.UTC(2026, 8, 7, 4, 7)])); } };"
        "window.dispatchEvent(new Event('beforeprint'));")
    assert browser.find_element(By.ID, "printed-at").text == "Printed 07 Sep 2026, 04:07 UTC."
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    assert not browser.find_element(By.ID, "print-note").is_displayed()
    browser.save_screenshot(str(tmp_path / "batch.png"))

    # Back to the form: the button is usable again and no longer says it is classifying.
    browser.back()
    button = wait_for(browser, "#submit")
    assert button.is_enabled()
    assert browser.find_element(By.ID, "submit-label").text in {"Classify", "Classify 4 images"}


def test_a_folder_beyond_one_upload_is_sent_in_parts_into_one_batch(browser, tmp_path,
                                                                    trusted_model_dir):
    """With at most 2 files per upload, a folder of 5 images, a copy of one and 2 files that are
    not images by name becomes one batch of 5, sent as 3 requests, without the user's help;
    the message naming the copy left out waits for the batch page."""
    from selenium.webdriver.common.by import By

    folder = tmp_path / "film 12"
    colours = [(200, 60, 60), (60, 60, 200), (120, 60, 160), (90, 90, 90), (30, 160, 60)]
    for i, colour in enumerate(colours):
        make_image(folder / ("slide" if i > 2 else "") / f"cell{i}.png", colour, fmt="PNG")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0")
    # A backup of the first image, sent in a later part: left out, and the message says so.
    (folder / "slide" / "zz-backup.png").write_bytes((folder / "cell0.png").read_bytes())
    with serving(tmp_path, trusted_model_dir, MAX_FILES=2) as url:
        browser.get(url + "/")
        assert browser.find_element(By.ID, "folder-button").is_displayed()  # upload.js ran
        browser.find_element(By.ID, "folder").send_keys(str(folder))
        assert browser.find_element(By.ID, "submit-label").text == "Classify 6 images"
        note = browser.find_element(By.ID, "parts-note").text
        assert note.startswith("Left out 2 files not named as an image: ")
        assert "notes.txt" in note and ".DS_Store" in note
        assert "These 6 images will be sent in 3 parts (one upload holds at most 2 files" in note
        click_in_view(browser, browser.find_element(By.ID, "submit"))
        wait_for(browser, "#differential")
        rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        assert sorted(r.find_element(By.CSS_SELECTOR, ".file-name").text for r in rows) == [
            f"cell{i}.png" for i in range(5)]
        assert ("Left out 1 file that is byte for byte an image already in this batch, so that "
                "no cell is counted twice: zz-backup.png (the same as cell0.png).") in \
            browser.find_element(By.ID, "notices").text
        assert re.fullmatch(r".*/batch/[0-9a-f]{32}", browser.current_url)


def test_a_part_the_server_refuses_shows_its_page_with_the_reason(browser, tmp_path,
                                                                   trusted_model_dir):
    """The second part holds no readable image: the server's answer (the batch page, 400,
    naming the files) is what the user sees, and the first part's batch is kept."""
    from selenium.webdriver.common.by import By

    files = [make_image(tmp_path / f"cell{i}.png", c, fmt="PNG")
             for i, c in enumerate([(200, 60, 60), (60, 60, 200)])]
    for name in ("x1.png", "x2.png"):
        (tmp_path / name).write_text(f"{name} is not an image")
    with serving(tmp_path, trusted_model_dir, MAX_FILES=2) as url:
        browser.get(url + "/")
        browser.find_element(By.ID, "file").send_keys(
            "\n".join(map(str, [*files, tmp_path / "x1.png", tmp_path / "x2.png"])))
        click_in_view(browser, browser.find_element(By.ID, "submit"))
        errors = wait_for(browser, "#add-errors")
        assert "x1.png" in errors.text and "x2.png" in errors.text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")) == 2
        # The page written in works (its scripts ran again without a clash: the bars app.js
        # draws), at the batch's address, which a reload opens.
        assert browser.find_element(By.CSS_SELECTOR, ".progress-bar[data-value]").get_attribute(
            "style").startswith("width:")
        assert re.fullmatch(url + r"/batch/[0-9a-f]{32}", browser.current_url)
        assert [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"
                and "400" not in e["message"]] == []


def test_a_broken_connection_mid_way_stays_and_says_how_far_it_got(browser, tmp_path,
                                                                   trusted_model_dir):
    """Gone to the batch, the user would see a batch that looks complete."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    files = [make_image(tmp_path / f"cell{i}.png", c, fmt="PNG") for i, c in enumerate(
        [(200, 60, 60), (60, 60, 200), (120, 60, 160)])]
    with serving(tmp_path, trusted_model_dir, MAX_FILES=2) as url:
        browser.get(url + "/")
        browser.find_element(By.ID, "file").send_keys("\n".join(map(str, files)))
        browser.execute_script(  # the second request never reaches the server
            "const real = window.fetch; let calls = 0; window.fetch = (...args) => "
            "++calls === 1 ? real(...args) : Promise.reject(new TypeError('offline'));")
        click_in_view(browser, browser.find_element(By.ID, "submit"))
        WebDriverWait(browser, 30).until(lambda d: "connection failed" in d.find_element(
            By.ID, "parts-note").text)
        note = browser.find_element(By.ID, "parts-note")
        assert note.text == ("The connection failed: 2 of the 3 images were sent into the "
                             "batch. Open the batch: add the rest there.")
        assert re.fullmatch(url + r"/batch/[0-9a-f]{32}",
                            note.find_element(By.TAG_NAME, "a").get_attribute("href"))
        assert browser.current_url == url + "/"


def test_leaving_while_parts_are_being_sent_asks_first(browser, tmp_path, trusted_model_dir):
    """Gone before the last part, a batch would hold only the images sent so far and look
    complete: the page cancels the unload (so the browser asks) until the parts are in."""
    from selenium.webdriver.common.by import By

    files = [make_image(tmp_path / f"cell{i}.png", c, fmt="PNG") for i, c in enumerate(
        [(200, 60, 60), (60, 60, 200), (120, 60, 160)])]
    leaving = ("const e = new Event('beforeunload', {cancelable: true});"
               " window.dispatchEvent(e); return e.defaultPrevented;")
    with serving(tmp_path, trusted_model_dir, MAX_FILES=2) as url:
        browser.get(url + "/")
        browser.find_element(By.ID, "file").send_keys("\n".join(map(str, files)))
        assert not browser.execute_script(leaving)
        browser.execute_script("window.fetch = () => new Promise(() => {});")  # a slow server
        click_in_view(browser, browser.find_element(By.ID, "submit"))
        assert browser.find_element(By.ID, "submit-label").text == (
            "Classifying images 1 to 2 of 3…")
        assert browser.execute_script(leaving)

def test_images_added_beyond_one_request_go_in_parts_up_to_the_room_left(browser, tmp_path,
                                                                         trusted_model_dir):
    from selenium.webdriver.common.by import By

    files = [make_image(tmp_path / f"cell{i}.png", c, fmt="PNG") for i, c in enumerate(
        [(200, 60, 60), (60, 60, 200), (120, 60, 160), (90, 90, 90), (30, 160, 60)])]
    with serving(tmp_path, trusted_model_dir, MAX_FILES=2, MAX_BATCH_IMAGES=4) as url:
        browser.get(url + "/")
        browser.find_element(By.ID, "file").send_keys(str(files[0]))
        browser.find_element(By.ID, "submit").click()
        wait_for(browser, "#add-form")
        assert "room for 3 more" in browser.find_element(By.ID, "add-form").text
        field = browser.find_element(By.ID, "add-file")
        field.send_keys("\n".join(map(str, files[1:])))  # 4 more: one too many
        assert browser.find_element(By.ID, "add-note").text == (
            "This batch has room for 3 more images: choose fewer than these 4.")
        assert not browser.execute_script("return arguments[0].form.checkValidity()", field)
        field.clear()
        field.send_keys("\n".join(map(str, files[1:4])))
        assert browser.find_element(By.ID, "add-note").text.startswith(
            "These 3 images will be sent in 2 parts (one upload holds at most 2 files")
        click_in_view(browser, browser.find_element(By.ID, "add-submit"))
        wait_for(browser, "#differential")
        rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        assert [r.find_element(By.CSS_SELECTOR, ".file-name").text for r in rows] == [
            f"cell{i}.png" for i in range(4)]


def upload_two_cells(browser, base_url: str, tmp_path: Path) -> str:
    """Upload cell0.png and cell1.png through the form; the batch page's address."""
    from selenium.webdriver.common.by import By

    files = [make_image(tmp_path / f"cell{i}.png", c, fmt="PNG")
             for i, c in enumerate([(200, 60, 60), (60, 60, 200)])]
    browser.get(base_url + "/")
    browser.find_element(By.ID, "file").send_keys("\n".join(map(str, files)))
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, "#differential")
    return browser.current_url


def test_delete_now_asks_first_then_deletes_the_batch(browser, base_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    batch_url = upload_two_cells(browser, base_url, tmp_path)

    # Cancelling the question keeps everything (app.js stops the form).
    browser.find_element(By.CSS_SELECTOR, "#delete-form button").click()
    alert = WebDriverWait(browser, 10).until(expected_conditions.alert_is_present())
    assert "all 2 images of this batch" in alert.text
    alert.dismiss()
    assert browser.current_url == batch_url
    assert urllib.request.urlopen(batch_url).status == 200

    browser.find_element(By.CSS_SELECTOR, "#delete-form button").click()
    WebDriverWait(browser, 10).until(expected_conditions.alert_is_present()).accept()
    notice = wait_for(browser, "#notices")
    assert "results of 2 images" in notice.text
    assert browser.find_element(By.ID, "upload-form").is_displayed()  # back at the form
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(batch_url)
    assert gone.value.code == 404


def test_a_page_left_open_warns_before_its_batch_is_deleted(browser, tmp_path,
                                                            trusted_model_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    # Kept 60 s after its last change: the warning shows in the last quarter, its last 15 s.
    with serving(tmp_path, trusted_model_dir, RETENTION_SECONDS=60,
                 PURGE_INTERVAL_SECONDS=3600) as url:  # no purge before the last step
        batch_id = upload_two_cells(browser, url, tmp_path).rsplit("/", 1)[1]
        aged(tmp_path / "uploads", batch_id, 40)
        browser.get(f"{url}/batch/{batch_id}/review?show=all")
        choice = Select(wait_for(browser, "#review-all-form select"))
        choice.select_by_index(1)  # a choice made, not saved
        chosen = choice.first_selected_option.text
        note = browser.find_element(By.ID, "expires-soon")
        assert not note.is_displayed()  # 20 s are left, less the time the page took
        WebDriverWait(browser, 20).until(lambda _: note.is_displayed())
        assert "This batch is deleted in less than a minute" in note.text
        assert note.find_element(By.CSS_SELECTOR, "button").text == "Keep it 1 minute from now"
        browser.save_screenshot("/tmp/hematovision_expiry_warning.png")
        WebDriverWait(browser, 25).until(lambda _: "ran out" in note.text)
        assert "in less than a minute" not in note.text
        # Until the purge runs, keeping it still saves it, and the page stays as it was.
        browser.execute_script("window.stayed = true")
        click_in_view(browser, note.find_element(By.CSS_SELECTOR, "button"))
        WebDriverWait(browser, 10).until(lambda _: not note.is_displayed())
        assert "Kept this batch until" in browser.find_element(By.ID, "kept-note").text
        assert browser.execute_script("return window.stayed") is True
        assert Select(browser.find_element(By.CSS_SELECTOR, "#review-all-form select")
                      ).first_selected_option.text == chosen


def test_a_warning_goes_when_a_colleague_keeps_the_batch(browser, tmp_path, trusted_model_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with serving(tmp_path, trusted_model_dir, RETENTION_SECONDS=60,
                 PURGE_INTERVAL_SECONDS=3600) as url:
        kept, deleted = (upload_two_cells(browser, url, tmp_path).rsplit("/", 1)[1]
                         for _ in range(2))
        for batch_id in (kept, deleted):
            aged(tmp_path / "uploads", batch_id, 50)
        browser.get(f"{url}/batch/{kept}")
        note = browser.find_element(By.ID, "expires-soon")
        WebDriverWait(browser, 15).until(lambda _: note.is_displayed())
        deletion = browser.find_element(By.CSS_SELECTOR, "#expires .deletion-time")
        shown = deletion.get_attribute("datetime")
        # A colleague's review, in another browser: the batch is kept 60 s from now.
        uploads.update_batch(tmp_path / "uploads", kept, lambda batch: None, renew=True)
        WebDriverWait(browser, 20).until(lambda _: not note.is_displayed())
        assert deletion.get_attribute("datetime") > shown

        # Deleted meanwhile (Delete now in another tab): the warning says so at its next look.
        browser.get(f"{url}/batch/{deleted}")
        note = browser.find_element(By.ID, "expires-soon")
        WebDriverWait(browser, 15).until(lambda _: note.is_displayed())
        uploads.delete_batch(tmp_path / "uploads", deleted)
        WebDriverWait(browser, 20).until(lambda _: "no longer on the server" in note.text)
        assert not note.find_element(By.CSS_SELECTOR, "form button").is_displayed()


def test_keep_stays_on_the_page_and_no_late_answer_undoes_it(browser, tmp_path,
                                                              trusted_model_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    app = trusting_app(tmp_path, trusted_model_dir, RETENTION_SECONDS=240,
                       PURGE_INTERVAL_SECONDS=3600)
    slow = threading.Event()
    answer = app.wsgi_app

    def late(environ, start_response):  # the server's answer to "when?" delivered 3 s late
        body = list(answer(environ, start_response))
        if slow.is_set() and environ["PATH_INFO"].endswith("/expires"):
            time.sleep(3)
        return body

    app.wsgi_app = late
    with served(app) as url:
        batch_id = upload_two_cells(browser, url, tmp_path).rsplit("/", 1)[1]
        aged(tmp_path / "uploads", batch_id, 200)  # 40 s left: warned at once
        slow.set()
        browser.get(f"{url}/batch/{batch_id}/review?show=all")
        note = browser.find_element(By.ID, "expires-soon")
        assert note.is_displayed()
        # Kept while the page's question is on its way: its answer, older, must not undo it.
        click_in_view(browser, note.find_element(By.CSS_SELECTOR, "button"))
        WebDriverWait(browser, 10).until(lambda _: not note.is_displayed())
        time.sleep(4)
        assert not note.is_displayed()
        assert "Kept this batch until" in browser.find_element(By.ID, "kept-note").text

        # A batch whose stored times are damaged has no warning; Keep still stays on the page.
        path = tmp_path / "uploads" / f"{batch_id}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "kept_from": "x",
                                    "created": -1}))
        browser.get(f"{url}/batch/{batch_id}/review?show=all")
        choice = Select(wait_for(browser, "#review-all-form select"))
        choice.select_by_index(1)
        browser.execute_script("window.stayed = true")
        click_in_view(browser, browser.find_element(By.CSS_SELECTOR, "#keep-form button"))
        WebDriverWait(browser, 10).until(
            lambda _: "Kept this batch until" in browser.find_element(By.ID, "kept-note").text)
        assert browser.execute_script("return window.stayed") is True
        assert choice.first_selected_option.get_attribute("value") != ""


def test_a_review_changes_the_class_the_differential_counts(browser, base_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    batch_url = upload_two_cells(browser, base_url, tmp_path)

    browser.find_element(By.LINK_TEXT, "cell0.png").click()
    model_label = wait_for(browser, "#predicted-label").get_attribute("data-label")
    verdict = next(c for c in ("monocyte", "eosinophil") if c != model_label)
    Select(browser.find_element(By.ID, "verdict")).select_by_value(verdict)
    browser.find_element(By.ID, "review-save").click()

    # Every image was accepted, so none is left to review: back to the batch.
    wait_for(browser, "#differential")
    assert browser.current_url == batch_url
    assert "Saved your review of cell0.png" in browser.find_element(By.ID, "notices").text
    counted = browser.find_element(By.CSS_SELECTOR, f'#differential tr[data-class="{verdict}"] td')
    assert int(counted.text) >= 1
    row = browser.find_element(By.CSS_SELECTOR, f'#results tr[data-verdict="{verdict}"]')
    assert "cell0.png" in row.text and "reviewed" in row.text
    problems = [e["message"] for e in browser.get_log("browser")
                if e["level"] == "SEVERE" or "Content Security Policy" in e["message"]]
    assert problems == []


def test_the_review_page_saves_every_class_chosen(browser, base_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    batch_url = upload_two_cells(browser, base_url, tmp_path)
    browser.find_element(By.ID, "review-every-link").click()  # every image was accepted
    wait_for(browser, "#review-all-form")
    cells = browser.find_elements(By.CSS_SELECTOR, "fieldset.review-cell")
    assert sorted(c.get_attribute("data-index") for c in cells) == ["0", "1"]
    images = browser.find_elements(By.CSS_SELECTOR, "img.review-cell-image")
    assert all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
    Select(browser.find_element(By.ID, "verdict-0")).select_by_value("monocyte")
    # Leaving with a choice made asks first (the page cancels the unload, so the browser asks;
    # its dialog itself depends on the browser's rules, so the event is what is checked).
    leaving = ("const e = new Event('beforeunload', {cancelable: true});"
               " window.dispatchEvent(e); return e.defaultPrevented;")
    assert browser.execute_script(leaving)
    Select(browser.find_element(By.ID, "verdict-0")).select_by_value("")
    assert not browser.execute_script(leaving)  # no choice made: nothing to lose
    Select(browser.find_element(By.ID, "verdict-0")).select_by_value("monocyte")
    Select(browser.find_element(By.ID, "verdict-1")).select_by_value("excluded")
    browser.find_element(By.ID, "review-all-save").click()  # saving asks nothing

    wait_for(browser, "#differential")  # none left to review: back to the batch
    assert browser.current_url == batch_url
    assert "Saved your review of 2 cells" in browser.find_element(By.ID, "notices").text
    counted = browser.find_element(By.CSS_SELECTOR, '#differential tr[data-class="monocyte"] td')
    assert int(counted.text) == 1
    problems = [e["message"] for e in browser.get_log("browser")
                if e["level"] == "SEVERE" or "Content Security Policy" in e["message"]]
    assert problems == []


def test_a_key_gives_the_class_of_its_place_in_the_list(browser, base_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    image = make_image(tmp_path / "cell.png", (200, 60, 60), fmt="PNG")
    browser.get(base_url + "/")
    browser.find_element(By.ID, "file").send_keys(str(image))
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, "#review-form")
    keys = browser.find_element(By.ID, "review-keys")
    assert keys.is_displayed() and "2 Lymphocyte" in keys.text  # app.js showed the hint
    browser.find_element(By.TAG_NAME, "body").send_keys("2")
    verdict = wait_for(browser, "#review-verdict")
    assert verdict.get_attribute("data-verdict") == "lymphocyte"  # the second class
    browser.find_element(By.TAG_NAME, "body").send_keys("x")
    wait_for(browser, '#review-verdict[data-verdict="excluded"]')
    # A key pressed with a modifier is not a verdict: the page is not submitted (a new page
    # would not have the mark).
    browser.execute_script("window.hvMark = true")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.CONTROL, "3")
    browser.find_element(By.TAG_NAME, "body").send_keys("7")  # no seventh class: nothing
    time.sleep(1)
    assert browser.execute_script("return window.hvMark === true")
    assert browser.find_element(By.ID, "review-verdict").get_attribute(
        "data-verdict") == "excluded"


def test_added_images_join_the_batch_and_the_arrow_keys_step_through_it(browser, base_url,
                                                                        tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    batch_url = upload_two_cells(browser, base_url, tmp_path)
    more = make_image(tmp_path / "cell2.png", (120, 60, 160), fmt="PNG")
    browser.find_element(By.ID, "add-file").send_keys(str(more))
    browser.execute_script("arguments[0].click()", browser.find_element(By.ID, "add-submit"))
    notice = wait_for(browser, "#notices")
    assert "Added 1 image to this batch" in notice.text and browser.current_url == batch_url
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")) == 3

    # On an image's page the arrow keys step through the batch.
    click_in_view(browser, browser.find_element(By.LINK_TEXT, "cell1.png"))
    wait_for(browser, "#review-form")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    wait_for(browser, 'a[rel="prev"]')
    assert browser.current_url == batch_url + "/2"
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    WebDriverWait(browser, 10).until(lambda d: d.current_url == batch_url + "/1")


# What sticks out sideways: the page scrolling as a whole, and any table scrolling in its box.
OVERFLOW = """
const page = document.documentElement;
const found = page.scrollWidth > page.clientWidth
    ? [`the page is ${page.scrollWidth} px wide in a ${page.clientWidth} px window`] : [];
for (const box of document.querySelectorAll(arguments[0])) {
  if (box.scrollWidth > box.clientWidth)
    found.push(`${box.firstElementChild.id}: ${box.scrollWidth} px in ${box.clientWidth}`);
}
return found;
"""


def test_the_batch_page_fits_a_phone_and_its_tables_their_column(browser, base_url,
                                                                  tmp_path):
    """On a phone nothing widens the page (a wide table scrolls in its own box); on a laptop
    screen the differential's column holds its tables whole, absolute counts and a manual
    count included."""
    from selenium.webdriver.common.by import By

    batch_url = upload_two_cells(browser, base_url, tmp_path)
    browser.find_element(By.ID, "sample-id").send_keys("H-2026-01234")
    browser.find_element(By.ID, "wbc").send_keys("6.5")
    browser.find_element(By.ID, "wbc").submit()
    wait_for(browser, "#absolute")
    browser.execute_script("arguments[0].open = true",
                           browser.find_element(By.ID, "manual-details"))
    for field, count in (("manual_neutrophil", "55"), ("manual_lymphocyte", "35"),
                         ("manual_other", "10")):
        browser.find_element(By.ID, field).send_keys(count)
    browser.find_element(By.ID, "manual_other").submit()
    wait_for(browser, "#manual-comparison")

    browser.set_window_size(360, 900)
    for page in (batch_url, batch_url + "/0", base_url + "/models/tiny", base_url + "/"):
        browser.get(page)
        assert browser.execute_script(OVERFLOW, "none") == [], page
    browser.set_window_size(1280, 900)
    browser.get(batch_url)
    column = "#differential-title ~ .table-responsive, #differential-title ~ * .table-responsive"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#differential-title ~ .table-responsive")
               ) >= 4  # differential, absolute counts, not counted, manual count
    assert browser.execute_script(OVERFLOW, column) == []


PBC_CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
               "neutrophil", "platelet"]


def pdf_pages(browser, width_in: float, height_in: float) -> int:
    """The pages of the open page printed to PDF on paper of this size, as Chromium prints."""
    import base64

    pdf = base64.b64decode(browser.execute_cdp_cmd(
        "Page.printToPDF", {"paperWidth": width_in, "paperHeight": height_in})["data"])
    return int(re.search(rb"/Type\s*/Pages\b.*?/Count\s+(\d+)", pdf, re.S).group(1))


def overflowing_tables(browser, width_in: float) -> list[tuple[int, int]]:
    """The tables of the open page wider than their box (width, what they need) when laid out
    for print on paper this wide, within Chromium's default margins of 0.4 inch a side."""
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": round((width_in - 0.8) * 96), "height": 1000, "deviceScaleFactor": 1,
        "mobile": False})
    try:
        return [tuple(pair) for pair in browser.execute_script(
            "return [...document.querySelectorAll('.table-responsive, table')]"
            ".map(e => [e.clientWidth, e.scrollWidth]).filter(([w, n]) => n > w);")]
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})


def test_the_report_of_an_eight_class_count_prints_on_one_sheet(browser, tmp_path,
                                                                 trusted_model_dir):
    """The report at its fullest: eight classes with cells per litre, the count corrected for
    nucleated red cells, cells beside the differential, a manual count, every note, images
    removed with the longest names and reasons, reviewers with the longest names and a
    sign-off with the longest comment, under the lab's name, on one side of A4 and of Letter,
    across the sheet's width with no table cut off."""
    from selenium.webdriver.common.by import By

    from hematovision.web import uploads
    from tests.web_helpers import (batch_as_said, csrf_token, review_cells, save_sample,
                                   sign_off)

    app = make_app(tmp_path, make_models_root(tmp_path / "models", trusted_model_dir,
                                              names=("tiny",)),
                   LAB_NAME="Central Hematology Laboratory, Department of Laboratory Medicine")
    client = app.test_client()
    batch_id = batch_as_said(client, "tiny", [(c, "accepted", 0.99) for c in PBC_CLASSES
                                              for _ in range(3)])
    def eight_classes(batch: dict) -> None:  # as the eight-class model would store them
        batch["classes"] = PBC_CLASSES
        for result in batch["results"]:
            result["probabilities"] = {c: float(c == result["label"]) for c in PBC_CLASSES}

    uploads.update_batch(Path(app.config["UPLOAD_FOLDER"]), batch_id, eight_classes)
    save_sample(client, batch_id, "H-2026-01234", "7.2", wbc_includes_nrbc="on")
    token = csrf_token(client)
    assert client.post(f"/batch/{batch_id}/manual", data={
        "csrf_token": token, "manual_other": "2",
        **{f"manual_{c}": "11" for c in PBC_CLASSES if c != "platelet"}}).status_code == 303
    def long_names(batch: dict) -> None:
        for n, result in enumerate(batch["results"]):
            result["file"] = f"{n:02d}-" + "film-2026-12-07-slide-A-field" * 4 + ".png"
            # Every cell below target, so its line and the classes' marks are printed too.
            result["scores"]["held_out_band"] = {"low": 0.95, "high": 0.99, "images": 82,
                                                 "right": 76, "target": 0.99}

    uploads.update_batch(Path(app.config["UPLOAD_FOLDER"]), batch_id, long_names)
    for index in (2, 5, 8, 11):  # removed with the longest reasons: three named, then more
        assert client.post(f"/batch/{batch_id}/{index}/remove", data={
            "csrf_token": csrf_token(client), "reason": "R" * 200}).status_code == 303
    for n in range(4):  # three reviewers named, then how many more
        assert client.post("/reviewer", data={"csrf_token": token, "next": "/",
                                              "reviewer": f"{n} " + "W" * 58}).status_code == 303
        review_cells(client, batch_id, **{f"n{n}": PBC_CLASSES[0]})
    comment = ("Platelet clumps seen at the feathered edge; red cells normochromic with mild "
               "anisocytosis; a few smudge cells. ") * 3
    assert sign_off(client, batch_id, comment=comment[:300]).status_code == 303
    with served(app) as url:
        browser.get(f"{url}/batch/{batch_id}/report")
        assert browser.find_element(By.ID, "print-button").is_displayed()  # app.js showed it
        table = browser.find_element(By.ID, "report-differential").text
        assert "Immature granulocyte" in table and "× 10⁹/L" in table
        assert "below target are not looked at" in browser.find_element(
            By.ID, "report-status-near").text
        assert "corrected for nucleated red cells" in browser.find_element(
            By.ID, "report-facts").text
        assert browser.find_elements(By.ID, "report-manual")
        shown = browser.find_element(By.TAG_NAME, "main").text
        assert "and 1 more" in shown and "R" * 59 + "…" in shown
        assert pdf_pages(browser, 8.27, 11.69) == 1  # A4
        assert pdf_pages(browser, 8.5, 11) == 1  # Letter
        assert overflowing_tables(browser, 8.27) == [] and overflowing_tables(browser, 8.5) == []


def test_back_after_an_upload_sends_the_next_to_the_model_the_picker_shows(browser, tmp_path,
                                                                           trusted_model_dir):
    """Back to the upload page, the browser restored the picker's choice after app.js had
    named the model the page was drawn with in the form's address: Classify then sent both,
    and was refused 400 ("'model' is given twice with different values")."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    app = trusting_app(tmp_path, trusted_model_dir)
    make_models_root(Path(app.config["MODELS_ROOT"]), trusted_model_dir, names=("other",),
                     card={"trust": app.extensions["predictors"]["tiny"].card["trust"]})
    app = make_app(tmp_path, Path(app.config["MODELS_ROOT"]))
    files = [make_image(tmp_path / f"cell{i}.png", c, fmt="PNG")
             for i, c in enumerate([(200, 60, 60), (60, 60, 200)])]
    with served(app) as url:
        browser.get(url + "/")
        Select(browser.find_element(By.ID, "model")).select_by_value("other")
        browser.find_element(By.ID, "file").send_keys(str(files[0]))
        browser.find_element(By.ID, "submit").click()
        wait_for(browser, "#predicted-label")
        browser.back()
        wait_for(browser, "#upload-form")
        time.sleep(0.5)
        shown = browser.execute_script("return document.getElementById('model').value")
        action = browser.execute_script("return document.getElementById('upload-form').action")
        notes = [n.get_attribute("data-model") for n in browser.find_elements(
            By.CSS_SELECTOR, ".model-expects") if n.is_displayed()]
        assert f"model={shown}" in action and notes == [shown]
        browser.find_element(By.ID, "file").send_keys(str(files[1]))
        browser.find_element(By.ID, "submit").click()
        wait_for(browser, "#made-by")  # a batch's page, whatever its size
        assert "/batch/" in browser.current_url
        assert f"model {shown}" in browser.find_element(By.ID, "made-by").text
