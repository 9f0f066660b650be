"""Every page's markup: ids unique, every image with a text alternative, every form control
with a label, every label and aria reference pointing at something, and nothing the Content
Security Policy would block (inline styles, inline scripts, event-handler attributes)."""

from __future__ import annotations

import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import make_smear, with_nuclei
from tests.web_helpers import (csrf_token, image_bytes, make_app, make_models_root,
                               page, upload)

CONTROLS = {"input", "select", "textarea"}
UNLABELLED_INPUTS = {"hidden", "submit", "button", "reset", "image"}


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.images: list[dict] = []
        self.controls: list[dict] = []
        self.labels_for: list[str] = []
        self.references: list[tuple[str, str]] = []  # (attribute, id) of aria-* / for
        self.inline: list[str] = []
        self.open_labels = 0
        self.scripts_with_code = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.append(a["id"])
        if "style" in a:
            self.inline.append(f"<{tag} style=...>")
        self.inline += [f"<{tag} {k}=...>" for k in a if k.startswith("on")]
        for key in ("aria-labelledby", "aria-describedby", "aria-controls"):
            self.references += [(key, ref) for ref in a.get(key, "").split()]
        if tag == "img":
            self.images.append(a)
        if tag == "label":
            self.open_labels += 1
            if "for" in a:
                self.labels_for.append(a["for"])
        if tag in CONTROLS and a.get("type", "") not in UNLABELLED_INPUTS:
            self.controls.append({**a, "_tag": tag, "_in_label": self.open_labels > 0})
        if tag == "script":
            self._in_script = "src" not in a

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.open_labels -= 1
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.scripts_with_code += 1


def problems(html: str) -> list[str]:
    page = Page()
    page.feed(html)
    found = []
    duplicated = sorted({i for i in page.ids if page.ids.count(i) > 1})
    if duplicated:
        found.append(f"ids used twice: {duplicated}")
    found += [f"image without alt: {img.get('src')}" for img in page.images if "alt" not in img]
    for control in page.controls:
        labelled = (control["_in_label"] or control.get("id") in page.labels_for
                    or control.get("aria-label") or control.get("aria-labelledby"))
        if not labelled:
            found.append(f"{control['_tag']} without a label: {control.get('name') or control}")
    found += [f"label for a missing id: {i}" for i in page.labels_for if i not in page.ids]
    found += [f"{key} names a missing id: {ref}" for key, ref in page.references
              if ref not in page.ids]
    found += [f"inline markup the CSP blocks: {x}" for x in page.inline]
    if page.scripts_with_code:
        found.append(f"{page.scripts_with_code} inline scripts")
    return found


@pytest.fixture
def models_root(tmp_path, trusted_model_dir):
    card = json.loads((trusted_model_dir / "model_card.json").read_text())
    trust = card["trust"]
    trust["ood"]["threshold"] = 1e9
    root = make_models_root(tmp_path / "models", trusted_model_dir, names=("tiny",), card={
        "trust": trust, "preprocessing": {**card["preprocessing"], "crop": "nucleus"},
        "expects": "Stained smear fields"})
    return make_models_root(root, trusted_model_dir, names=("other",))


def pages(client) -> dict[str, str]:
    """Every kind of page, its address -> its HTML."""
    field = io.BytesIO()
    with_nuclei(make_smear(30, seed=1), [(80, 120, 22), (240, 110, 22)]).save(field, "PNG")
    batch = upload(client, "tiny", ("field.png", field.getvalue()),
                   ("cell.png", image_bytes(fmt="PNG")), ("broken.png", b"not an image"))
    single = upload(client, "other", ("one.png", image_bytes(fmt="PNG")))
    client.post(f"{batch}/0/review", data={"csrf_token": csrf_token(client),
                                           "verdict": "eosinophil"})
    assert client.post(f"{batch}/manual", data={  # a comparison on the batch page
        "csrf_token": csrf_token(client), "manual_neutrophil": "3", "manual_other": "1"}
    ).status_code == 303
    addresses = ["/", "/?model=other", batch, f"{batch}/0", f"{batch}/1", f"{batch}/3",
                 f"{batch}/review", f"{batch}/review?show=all",
                 f"{batch}/review?show=eosinophil", f"{batch}/report", single, "/models",
                 "/models/tiny", "/models/other", "/docs/api", "/no-such-page",
                 f"{batch}/99"]
    return {address: client.get(address).get_data(as_text=True) for address in addresses}


def test_every_page_is_well_formed_for_assistive_technology_and_the_csp(client):
    found = {address: problems(html) for address, html in pages(client).items()}
    assert {address: p for address, p in found.items() if p} == {}


def test_the_checker_finds_each_kind_of_problem():
    html = ('<div id="a"></div><div id="a"></div><img src="x.png"><input name="q">'
            '<label for="gone">L</label><button aria-controls="nowhere"></button>'
            '<p style="color: red" onclick="go()"></p><script>alert(1)</script>'
            '<label>Wrapped <input name="ok"></label><input type="hidden" name="h">')
    assert problems(html) == [
        "ids used twice: ['a']", "image without alt: x.png", "input without a label: q",
        "label for a missing id: gone", "aria-controls names a missing id: nowhere",
        "inline markup the CSP blocks: <p style=...>",
        "inline markup the CSP blocks: <p onclick=...>", "1 inline scripts"]


# WCAG 2.1 AA, what the markup alone shows. The browser's side (contrast, focus, reflow, the
# accessibility tree) is in tests/test_accessibility.py.
LANDMARKS = ("header", "nav", "main", "footer")
SCOPES = {"col", "row", "colgroup", "rowgroup"}


class Outline(HTMLParser):
    """What a screen reader's user finds a page by: its language, title, landmarks, skip link
    and headings, and the names of its buttons, links, tables and groups of fields."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lang = ""
        self.title = ""
        self.landmarks: list[str] = []
        self.navs_unnamed = 0
        self.first_link = ""
        self.main_id = ""
        self.headings: list[int] = []
        self.ids: dict[str, dict] = {}
        self.unnamed: list[str] = []
        self.tables: list[dict] = []
        self.headers_without_scope = 0
        self.fieldsets: list[dict] = []
        self.invalid: dict[str, list[str]] = {}  # field id -> aria-describedby ids
        self.not_marked_invalid: list[str] = []
        self.progressbars_without_text = 0
        self._named: dict | None = None  # a button or link whose text is being read
        self._in_title = False
        self._in_caption = False
        self._after_fieldset: dict | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids[a["id"]] = a
        named_by_attribute = a.get("aria-label") or a.get("aria-labelledby")
        if self._after_fieldset is not None:  # a legend names its fieldset only as first child
            self._after_fieldset["legend"] = tag == "legend"
            self._after_fieldset = None
        if tag == "html":
            self.lang = a.get("lang", "")
        elif tag == "title":
            self._in_title = True
        elif tag in LANDMARKS:
            self.landmarks.append(tag)
            self.navs_unnamed += tag == "nav" and not named_by_attribute
            if tag == "main":
                self.main_id = a.get("id", "")
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.headings.append(int(tag[1]))
        elif tag == "table":
            self.tables.append({"id": a.get("id", ""), "named": bool(named_by_attribute)})
        elif tag == "caption":
            self._in_caption = True
        elif tag == "th":
            self.headers_without_scope += a.get("scope") not in SCOPES
        elif tag == "fieldset":
            self._after_fieldset = {"named": bool(named_by_attribute), "legend": False}
            self.fieldsets.append(self._after_fieldset)
        if tag == "a" and "href" in a and not self.first_link:
            self.first_link = a["href"]
        if tag == "img" and self._named is not None:
            self._named["text"] += a.get("alt", "")
        if (tag == "button" or (tag == "a" and "href" in a)) and a.get("aria-hidden") != "true":
            self._named = {"tag": tag, "text": a.get("aria-label", "") or a.get("title", ""),
                           "labelled": a.get("aria-labelledby", ""), "id": a.get("id", "")}
        if tag == "input" and a.get("type") in {"submit", "button", "reset"} and not (
                a.get("value") or named_by_attribute):
            self.unnamed.append(f"input type={a['type']}")
        if a.get("aria-invalid") == "true":
            self.invalid[a.get("id", "?")] = a.get("aria-describedby", "").split()
        elif "is-invalid" in a.get("class", "").split():
            self.not_marked_invalid.append(a.get("id", "?"))
        if a.get("role") == "progressbar" and not (a.get("aria-valuetext") and named_by_attribute):
            self.progressbars_without_text += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "caption":
            self._in_caption = False
        elif self._named is not None and tag == self._named["tag"]:
            if not (self._named["text"].strip() or self._named["labelled"]):
                self.unnamed.append(f"{tag} {self._named['id'] or '(no id)'}")
            self._named = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._in_caption and self.tables and data.strip():
            self.tables[-1]["named"] = True
        if self._named is not None:
            self._named["text"] += data


def outline(html: str) -> Outline:
    page = Outline()
    page.feed(html)
    return page


def accessibility_problems(html: str) -> list[str]:
    page = outline(html)
    found = []
    if page.lang != "en":
        found.append(f"html lang is {page.lang!r}")
    if not page.title.strip().removesuffix("· HematoVision").strip():
        found.append("no title of its own")
    if sorted(set(page.landmarks)) != sorted(LANDMARKS) or any(
            page.landmarks.count(t) != 1 for t in ("header", "main", "footer")):
        found.append(f"landmarks {page.landmarks}")
    if page.navs_unnamed and page.landmarks.count("nav") > 1:
        found.append(f"{page.navs_unnamed} of several nav landmarks without a name")
    if not page.main_id or page.first_link != f"#{page.main_id}":
        found.append(f"first link {page.first_link!r} does not skip to main #{page.main_id}")
    if page.headings.count(1) != 1:
        found.append(f"{page.headings.count(1)} h1")
    if page.headings and page.headings[0] != 1:
        found.append(f"first heading is h{page.headings[0]}")
    found += [f"heading skips h{a} to h{b}" for a, b in zip(page.headings, page.headings[1:])
              if b > a + 1]
    found += [f"without a name: {x}" for x in page.unnamed]
    found += [f"table without caption or label: #{t['id']}" for t in page.tables
              if not t["named"]]
    if page.headers_without_scope:
        found.append(f"{page.headers_without_scope} th without scope")
    found += ["fieldset without a legend or label" for f in page.fieldsets
              if not (f["named"] or f["legend"])]
    for field, described in page.invalid.items():
        alerts = [i for i in described if page.ids.get(i, {}).get("role") == "alert"]
        if not alerts:
            found.append(f"invalid field {field} not described by its error message")
    found += [f"field {x} looks invalid but is not aria-invalid" for x in page.not_marked_invalid]
    if page.progressbars_without_text:
        found.append(f"{page.progressbars_without_text} progress bars without a name and text")
    return found


def error_pages(client, tmp_path, models_root) -> dict[str, tuple[int, str]]:
    """Pages answering a refused form or a bad address: name -> (status, HTML)."""
    batch = upload(client, "tiny", ("a.png", image_bytes(fmt="PNG")),
                   ("b.png", image_bytes((60, 60, 200), fmt="PNG")))
    batch_id = batch.rsplit("/", 1)[-1]
    token = csrf_token(client)
    # A counted white cell, or the batch page has no manual-count form to refuse.
    client.post(f"{batch}/0/review", data={"csrf_token": token, "verdict": "eosinophil"})
    responses = {
        "upload": client.post("/upload", data={"csrf_token": token, "model": "tiny",
                                               "file": [(io.BytesIO(b"not an image"), "x.png")]}),
        "add": client.post(f"{batch}/add", data={
            "csrf_token": token, "file": [(io.BytesIO(b"not an image"), "x.png")]}),
        "sample": client.post(f"{batch}/sample", data={"csrf_token": token, "sample_id": "H-1",
                                                       "wbc": "6500"}),
        "manual": client.post(f"{batch}/manual", data={"csrf_token": token,
                                                       "manual_neutrophil": "sixty"}),
        "manual-total": client.post(f"{batch}/manual", data={
            "csrf_token": token, "manual_neutrophil": "6000", "manual_lymphocyte": "6000"}),
        "404": client.get("/no-such-page"),
    }
    small = make_app(tmp_path / "small", models_root, MAX_FORM_PARTS=5).test_client()
    responses["413"] = small.post("/upload", data={f"field{i}": "x" for i in range(8)},
                                  content_type="multipart/form-data")
    (Path(client.application.config["UPLOAD_FOLDER"]) / f"{batch_id}.json").write_text("{")
    responses["410"] = client.get(batch)
    return {name: (r.status_code, r.get_data(as_text=True)) for name, r in responses.items()}


def test_every_page_has_a_language_title_landmarks_skip_link_and_one_outline(client):
    found = {address: accessibility_problems(html) for address, html in pages(client).items()}
    assert {address: p for address, p in found.items() if p} == {}


def test_every_page_is_titled_apart_from_the_others(client):
    """Tabs, bookmarks and a screen reader's list of windows tell the pages apart; the three
    review lists and two images of the same name in two batches included."""
    titled = {address: outline(html).title for address, html in pages(client).items()}
    for same in ("/?model=other", "/no-such-page"):  # the same page as "/", and a second 404
        titled.pop(same)
    repeated = {t for t in titled.values() if list(titled.values()).count(t) > 1}
    assert repeated == set(), {a: t for a, t in titled.items() if t in repeated}
    single = next(a for a in titled if a.startswith("/batch/") and a.count("/") == 2
                  and titled[a].startswith("one.png"))
    assert titled[single] == "one.png · result · Batch of 1 image · HematoVision"
    batch = next(a for a in titled if a.endswith("/review"))[: -len("/review")]
    assert titled[f"{batch}/1"].startswith("field.png, cell 2 of 2 · result 2 of 4 · ")
    assert titled[f"{batch}/review?show=all"].startswith("Review every cell · Batch of")


def test_error_pages_and_refused_forms_tie_each_message_to_its_field(client, tmp_path,
                                                                    models_root):
    pages_ = error_pages(client, tmp_path, models_root)
    assert {name: status for name, (status, _) in pages_.items()} == {
        "upload": 400, "add": 400, "sample": 400, "manual": 400, "manual-total": 400,
        "404": 404, "413": 413, "410": 410}
    found = {name: accessibility_problems(html) for name, (_, html) in pages_.items()}
    assert {name: p for name, p in found.items() if p} == {}
    invalid = {name: outline(html).invalid for name, (_, html) in pages_.items()}
    assert invalid["upload"] == {"file": ["upload-errors", "file-help", "parts-note"]}
    assert invalid["add"] == {"add-file": ["add-errors", "add-note"]}
    assert invalid["sample"] == {"wbc": ["sample-help", "wbc-error"]}
    assert invalid["manual"] == {"manual_neutrophil": ["manual-help", "manual_neutrophil-error"]}
    # A count refused as a whole (more cells than a count holds) is every field's error.
    assert set(invalid["manual-total"]) == {"manual_neutrophil", "manual_lymphocyte",
                                            "manual_monocyte", "manual_eosinophil",
                                            "manual_other"}
    assert all("manual-error" in d for d in invalid["manual-total"].values())
    assert invalid["404"] == invalid["413"] == invalid["410"] == {}
    titles = {name: outline(html).title for name, (_, html) in pages_.items()}
    assert titles["413"] == "Form too large · HematoVision"
    assert titles["410"] == "These results can no longer be read · HematoVision"


def test_each_cell_of_the_review_page_is_a_group_named_by_its_file(client):
    batch = upload(client, "tiny", ("a.png", image_bytes(fmt="PNG")),
                   ("b.png", image_bytes((60, 60, 200), fmt="PNG")))
    html = page(client, f"{batch}/review?show=all")
    groups = re.findall(r'<fieldset[^>]*aria-labelledby="([^"]+)" aria-describedby="([^"]+)"',
                        html)
    assert sorted(groups) == [("cell-0-name", "cell-0-model"), ("cell-1-name", "cell-1-model")]
    names = dict(re.findall(r'<h2[^>]*id="(cell-\d-name)"><a[^>]*>([^<]+)</a></h2>', html))
    assert names == {"cell-0-name": "a.png", "cell-1-name": "b.png"}


def test_a_probability_bar_reads_as_the_page_shows_it_never_rounded_to_certainty(client):
    result = upload(client, "tiny", ("a.png", image_bytes(fmt="PNG")))
    html = page(client, result)
    bars = re.findall(r'role="progressbar" aria-labelledby="p-(\w+)"\s+aria-valuenow="([\d.]+)"'
                      r'[^>]*aria-valuetext="([^"]+)"', html)
    assert len(bars) == 4
    for name, now, shown in bars:
        assert shown.endswith(" %")
        if shown.startswith("&gt;"):  # above 99.95 %: never "100.0 %"
            assert shown == "&gt; 99.9 %"
        elif not shown.startswith("&lt;"):
            assert shown == f"{float(now):.1f} %"


def test_the_checker_finds_each_accessibility_problem():
    html = ('<html><head><title> · HematoVision</title></head><body><a href="/">Home</a>'
            '<header></header><nav></nav><nav></nav><main id="main"><h2>x</h2><h1>a</h1>'
            '<h1>b</h1><h4>c</h4><button><span aria-hidden="true"></span></button>'
            '<a href="/x"><img src="i.png" alt=""></a><input type="submit">'
            '<table><tr><th>h</th></tr></table><fieldset><p>p</p><legend>late</legend>'
            '</fieldset><input id="f" aria-invalid="true"><input id="g" class="is-invalid">'
            '<div role="progressbar" aria-valuenow="3"></div></main></body></html>')
    assert accessibility_problems(html) == [
        "html lang is ''", "no title of its own", "landmarks ['header', 'nav', 'nav', 'main']",
        "2 of several nav landmarks without a name",
        "first link '/' does not skip to main #main", "2 h1", "first heading is h2",
        "heading skips h1 to h4", "without a name: button (no id)",
        "without a name: a (no id)", "without a name: input type=submit",
        "table without caption or label: #", "1 th without scope",
        "fieldset without a legend or label",
        "invalid field f not described by its error message",
        "field g looks invalid but is not aria-invalid",
        "1 progress bars without a name and text"]


def test_messages_that_appear_are_announced(client):
    """A flash after a save, the upload's progress, a refused upload's reasons and a heat map
    that cannot load are read out by a screen reader without moving to them."""
    batch = upload(client, "tiny", ("a.png", image_bytes(fmt="PNG")),
                   ("b.png", image_bytes((60, 60, 200), fmt="PNG")))
    saved = client.post(f"{batch}/0/review", follow_redirects=True, data={
        "csrf_token": csrf_token(client), "verdict": "eosinophil"}).get_data(as_text=True)
    refused = client.post("/upload", data={
        "csrf_token": csrf_token(client), "model": "tiny",
        "file": [(io.BytesIO(b"not an image"), "x.png")]}).get_data(as_text=True)
    roles = {name: {i: outline(html).ids.get(i, {}).get("role") for i in ids}
             for name, html, ids in [
                 ("saved", saved, ["notices"]), ("home", page(client, "/"), ["upload-status"]),
                 ("refused", refused, ["upload-errors"]),
                 ("result", page(client, f"{batch}/1"), ["heat-map-error"])]}
    assert roles == {"saved": {"notices": "status"}, "home": {"upload-status": "status"},
                     "refused": {"upload-errors": "alert"},
                     "result": {"heat-map-error": "alert"}}
