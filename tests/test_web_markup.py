"""Every page's markup: ids unique, every image with a text alternative, every form control
with a label, every label and aria reference pointing at something, and nothing the Content
Security Policy would block (inline styles, inline scripts, event-handler attributes)."""

from __future__ import annotations

import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import make_smear, with_nuclei
from tests.web_helpers import csrf_token, image_bytes, make_models_root, upload

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
                 f"{batch}/review", f"{batch}/review?show=all", single, "/models",
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
