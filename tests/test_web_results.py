"""What a stored batch turns into beside its differential (hematovision.web.results): the CSV's
differential_class and reviewed_class, the review summary and agreement table, the next cell to
review; and the batch page that shows the differential, its flags and its downloads."""

import csv
import re
from pathlib import Path

import pytest

from hematovision.differential import EXCLUDED, differential
from hematovision.reference import intervals
from hematovision.web import results, uploads
from tests.test_differential import BATCH, PBC8, REVIEWED, WBC4, film, result, reviewed
from tests.web_helpers import csv_of, make_app, make_models_root, page, save_sample, text


def test_the_csv_marks_only_accepted_white_cells_as_counted():
    rows = list(csv.DictReader(csv_of(results.to_csv(BATCH, PBC8))))
    counted = {row["file"]: row["differential_class"] for row in rows}
    assert counted == {"neutrophil-accepted.jpg": "neutrophil", "lymphocyte-accepted.jpg":
                       "lymphocyte", "ig-accepted.jpg": "ig", "platelet-accepted.jpg": "",
                       "erythroblast-accepted.jpg": "", "neutrophil-unidentified.jpg": "",
                       "platelet-not_a_cell.jpg": "", "broken.jpg": ""}
    # Counting the column gives the differential's counts.
    column = [row["differential_class"] for row in rows if row["differential_class"]]
    shares = differential(BATCH, PBC8).shares
    assert {s.name: s.count for s in shares if s.count} == {c: column.count(c) for c in column}


@pytest.mark.parametrize("after, following", [(-1, 1), (0, 1), (1, 4), (3, 4), (4, 1), (5, 1)])
def test_the_next_cell_to_review_wraps_round_and_is_never_the_current_one(after, following):
    batch = [result("ig"), result("ig", "unidentified"), reviewed(result("ig", "unidentified"),
             "ig"), result("ig", "not_a_cell"), result("ig", "unidentified"), result("ig")]
    assert results.next_to_review(batch, after) == following
    assert results.next_to_review(batch[:2], 1) is None
    assert results.next_to_review([result("ig")], -1) is None


def test_confirming_an_accepted_answer_is_a_review_changing_or_excluding_overrules_it():
    assert results.review_summary(REVIEWED) == results.ReviewSummary(
        reviewed=5, labelled=4, accepted=3, overruled=2, to_review=1)


def test_the_csv_counts_reviewed_cells_as_the_reviewer_said():
    rows = list(csv.DictReader(csv_of(results.to_csv(REVIEWED, PBC8))))
    assert [(r["label"], r["status"], r["differential_class"], r["reviewed_class"])
            for r in rows] == [
        ("neutrophil", "unidentified", "monocyte", "monocyte"),
        ("lymphocyte", "accepted", "basophil", "basophil"),
        ("ig", "accepted", "ig", "ig"),
        ("neutrophil", "accepted", "", "excluded"),
        ("platelet", "not_a_cell", "", "erythroblast"),
        ("lymphocyte", "accepted", "lymphocyte", ""),
        ("eosinophil", "unidentified", "", ""),
        ("monocyte", "not_a_cell", "", ""),
        ("", "", "", "")]
    column = [r["differential_class"] for r in rows if r["differential_class"]]
    shares = differential(REVIEWED, PBC8).shares
    assert {s.name: s.count for s in shares if s.count} == {c: column.count(c) for c in column}


@pytest.fixture
def client(tmp_path, tiny_model_dir):
    app = make_app(tmp_path, make_models_root(tmp_path / "models", tiny_model_dir))
    return app.test_client()


def stored_batch(client, batch: list[dict], classes: list[str]) -> str:
    folder = client.application.config["UPLOAD_FOLDER"]
    return uploads.save_batch(Path(folder), {"model": "tiny", "classes": classes,
                                             "results": batch})


def test_the_batch_page_shows_other_cells_apart_from_the_shares(client):
    batch_id = stored_batch(client, BATCH, PBC8)
    html = client.get(f"/batch/{batch_id}").get_data(as_text=True)
    differential, others = html.split('id="differential"')[1].split('id="other-cells"')
    shares = dict(re.findall(r'<tr data-class="(\w+)">.*?<td class="text-end">\d+</td>\s*'
                             r'<td class="text-end">([\d.]+)</td>', differential, re.S))
    assert shares == {"basophil": "0.0", "eosinophil": "0.0", "ig": "25.0", "lymphocyte": "25.0",
                      "monocyte": "0.0", "neutrophil": "50.0"}
    assert "Share of the 4 white cells counted" in re.sub(r"\s+", " ", differential)
    # Each share's 95 % range: 2 neutrophils of 4 cells say little, 0 basophils rule out only
    # a large share.
    ranges = dict(re.findall(r'<tr data-class="(\w+)">.*?class="text-end text-nowrap small '
                             r'share-range">([^<]+)</td>', differential, re.S))
    assert ranges["neutrophil"] == "6.8–93.2" and ranges["basophil"] == "0.0–60.2"
    assert 'id="share-ranges"' in differential
    rows = re.findall(r'<tr data-class="(\w+)">.*?<td class="text-end">(\d+)</td>\s*'
                      r'<td class="text-end">([^<]+)</td>', others.split("</table>")[0], re.S)
    assert rows == [("erythroblast", "1", "25.0"), ("platelet", "1", "—")]
    assert ("nucleated red cells per 100 counted white cells, as they are reported, platelets as "
            "a count alone") in text(others)


def test_a_white_cell_model_has_no_table_of_other_cells(client):
    classes = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    batch_id = stored_batch(client, [result("monocyte", classes=classes)] * 2, classes)
    html = client.get(f"/batch/{batch_id}").get_data(as_text=True)
    assert 'id="differential"' in html and 'id="other-cells"' not in html


def test_reviews_against_the_model_class_by_class():
    rows = results.agreement(REVIEWED, PBC8)
    assert rows == [
        results.Agreement("basophil", agreed=0, other=1, unidentified=0, not_a_cell=0),
        results.Agreement("erythroblast", agreed=0, other=0, unidentified=0, not_a_cell=1),
        results.Agreement("ig", agreed=1, other=0, unidentified=0, not_a_cell=0),
        results.Agreement("monocyte", agreed=0, other=0, unidentified=1, not_a_cell=0),
        results.Agreement(EXCLUDED, agreed=0, other=1, unidentified=0, not_a_cell=0)]
    assert results.agreement(BATCH, PBC8) == []  # nothing reviewed, no table


def reference_cells(html: str) -> dict[str, str]:
    table = html.split('id="differential"')[1].split("</table>")[0]
    return {name: text(cell).strip() for name, cell in re.findall(
        r'<tr data-class="(\w+)">.*?<td class="text-end text-nowrap small reference">(.*?)</td>',
        table, re.S)}


def findings_text(html: str) -> str:
    """The page's text with the space a closing tag leaves before a stop or a semicolon gone."""
    return re.sub(r" ([;.])", r"\1", text(html))


def test_the_batch_page_flags_shares_outside_their_reference_interval(client):
    cells = film({"neutrophil": 55, "lymphocyte": 27, "eosinophil": 12, "monocyte": 6}, WBC4)
    html = client.get(f"/batch/{stored_batch(client, cells, WBC4)}").get_data(as_text=True)
    assert reference_cells(html) == {"eosinophil": "1–4 ▲ high", "lymphocyte": "20–40",
                                     "monocyte": "2–8", "neutrophil": "40–70"}
    assert 'data-flag="above"' in html and "the cell-type catalog's" in text(html)
    # 9 monocytes of 100: above 8 %, but the film may be inside.
    cells = film({"neutrophil": 64, "lymphocyte": 27, "monocyte": 9}, WBC4)
    html = client.get(f"/batch/{stored_batch(client, cells, WBC4)}").get_data(as_text=True)
    assert reference_cells(html)["monocyte"] == "2–8 ▲ high?"
    assert reference_cells(html)["eosinophil"] == "1–4 ▼ low?"
    assert ("Outside the reference intervals: Eosinophil 0.0 % low?; Monocyte 9.0 % high?. "
            'A flag with "?" lies outside the interval only within counting error: the film '
            "may be inside it.") in findings_text(html)


def test_no_share_is_flagged_while_cells_await_review(client):
    cells = film({"neutrophil": 55, "lymphocyte": 27, "eosinophil": 12, "monocyte": 6}, WBC4)
    batch_id = stored_batch(client, cells + [result("neutrophil", "unidentified", WBC4)], WBC4)
    html = client.get(f"/batch/{batch_id}").get_data(as_text=True)
    assert "share-flag" not in html and reference_cells(html)["eosinophil"] == "1–4"
    assert 'id="findings"' not in html
    assert ("Shares are not flagged against it until the unidentified cell is reviewed."
            in text(html))


def test_no_share_is_flagged_while_an_image_called_not_a_cell_waits_to_be_looked_at(client):
    """A white cell the white-cell finder saw in an image called not a blood-cell image is
    missing from every share until someone looks: the page, the CSV and the report flagged the
    shares as final (a walker's 4 lymphocytes and an image of noise: 'Lymphocyte 100.0 %')."""
    cells = film({"neutrophil": 55, "lymphocyte": 27, "eosinophil": 12, "monocyte": 6}, WBC4)
    unseen = {**result("neutrophil", "not_a_cell", WBC4), "white_cells": 1}
    agreed = {**result("neutrophil", "not_a_cell", WBC4), "white_cells": 0}  # finder found none
    batch_id = stored_batch(client, cells + [agreed], WBC4)
    assert "▲ high" in reference_cells(page(client, f"/batch/{batch_id}"))["eosinophil"]
    batch_id = stored_batch(client, cells + [unseen, unseen], WBC4)
    html = page(client, f"/batch/{batch_id}")
    assert "share-flag" not in html and reference_cells(html)["eosinophil"] == "1–4"
    assert 'id="findings"' not in html
    assert ("Shares are not flagged against it until the 2 images called not a blood-cell image "
            "are looked at.") in text(html)
    rows = list(csv.DictReader(csv_of(page(client, f"/batch/{batch_id}/differential.csv"))))
    assert {row["flag"] for row in rows} == {""}
    assert {row["not_a_cell_unreviewed"] for row in rows} == {"2"}
    assert ("no share is flagged until the 2 images called not a blood-cell image are looked at"
            in text(page(client, f"/batch/{batch_id}/report")))


def flag_figures(threshold: float) -> dict:
    ways = {way: {"detected": None, "false_flag": rate, "flagged": {}} for way, rate in (
        ("every cell named right", 0.005), ("accepted only", 0.525),
        ("unidentified reviewed", 0.006), ("no trust layer", 0.788))}
    return {"data": "test", "n": 400, "cells": 100, "draws": 2000,
            "confidence_threshold": threshold,
            "intervals": {c: list(v) for c, v in intervals().items() if c in WBC4},
            "scenarios": {"normal adult": {
                "composition": {c: 0.25 for c in WBC4}, "target": None,
                "unidentified_per_film": 45.0, "ways": ways}}}


# Measured at the served threshold and intervals; at another threshold (a server's own
# ACCURACY_TARGET); against other intervals (a lab's own): figures that are not its own.
@pytest.mark.parametrize("elsewhere, own_intervals, quoted", [
    (0.0, None, True), (0.001, None, False), (0.0, {"neutrophil": [40, 75]}, False)])
def test_while_flags_are_held_the_page_says_how_often_they_were_wrong(tmp_path, tiny_model_dir,
                                                                      elsewhere, own_intervals,
                                                                      quoted):
    from hematovision.predictor import Predictor

    served = Predictor(tiny_model_dir).trust.confidence_threshold
    root = make_models_root(tmp_path / "models", tiny_model_dir, card={
        "metrics": {"flags": flag_figures(served + elsewhere)}})
    client = make_app(tmp_path, root, REFERENCE_INTERVALS=own_intervals).test_client()
    batch_id = stored_batch(client, film({"neutrophil": 3}, WBC4)
                            + [result("neutrophil", "unidentified", WBC4)], WBC4)
    said = ("on normal adult films of 100 cells drawn from this model's test images, the accepted "
            "cells alone flagged a share wrongly in 52.5 % of films, and 0.6 % once the "
            "unidentified cells were reviewed")
    assert (said in text(page(client, f"/batch/{batch_id}"))) == quoted
    model_page = page(client, "/models/tiny")
    cells = re.findall(r'<td class="text-end small text-nowrap" data-way="([^"]+)">([^<]+)',
                       model_page)
    assert cells[1] == ("accepted only", "false flag 52.5 %")
    header = re.search(r'id="flags-table">.*?<thead>(.*?)</thead>', model_page, re.S).group(1)
    assert re.findall(r"<th[^>]*>([^<]+)</th>", header) == [
        "Films drawn as", "Every cell named right", "Accepted only", "Unidentified reviewed",
        "No trust layer"]


def test_a_lab_s_intervals_are_used_and_said_to_be(tmp_path, tiny_model_dir):
    root = make_models_root(tmp_path / "models", tiny_model_dir)
    client = make_app(tmp_path, root,
                      REFERENCE_INTERVALS={"neutrophil": [40, 75]}).test_client()
    cells = film({"neutrophil": 72, "lymphocyte": 28}, WBC4)
    html = client.get(f"/batch/{stored_batch(client, cells, WBC4)}").get_data(as_text=True)
    assert reference_cells(html)["neutrophil"] == "40–75"
    assert "this lab's where set" in text(html)


@pytest.mark.parametrize("key, value, message", [
    ("REFERENCE_INTERVALS", {"neutrophil": [75, 40]},
     r"The setting REFERENCE_INTERVALS .*'neutrophil': \[75, 40\] is not an interval"),
    ("ABSOLUTE_REFERENCE_INTERVALS", {"neutrophil": [2, 7500]},
     r"The setting ABSOLUTE_REFERENCE_INTERVALS .*within 0-1000 x 10\^9/L"),
])
def test_a_bad_reference_interval_setting_stops_the_app_naming_it(tmp_path, tiny_model_dir, key,
                                                                  value, message):
    from hematovision.card import ModelLoadError

    root = make_models_root(tmp_path / "models", tiny_model_dir)
    with pytest.raises(ModelLoadError, match=message):
        make_app(tmp_path, root, **{key: value})


def test_the_batch_page_shows_absolute_counts_for_the_sample_s_total_count(client):
    cells = film({"neutrophil": 20, "lymphocyte": 70, "monocyte": 6, "eosinophil": 4}, WBC4)
    batch_id = stored_batch(client, cells, WBC4)
    html = client.get(f"/batch/{batch_id}").get_data(as_text=True)
    assert 'id="no-absolute"' in html and 'id="absolute"' not in html
    assert save_sample(client, batch_id, wbc="5").status_code == 303
    html = client.get(f"/batch/{batch_id}").get_data(as_text=True)
    table = html.split('id="absolute"')[1].split("</table>")[0]
    rows = {name: text(row).split() for name, row in re.findall(
        r'<tr data-class="(\w+)">(.*?)</tr>', table, re.S)}
    assert rows["neutrophil"] == ["Neutrophil", "1.00", "0.63–1.46", "2–7.5", "▼", "low"]
    assert rows["lymphocyte"] == ["Lymphocyte", "3.50", "3.00–3.94", "1–4"]
    assert "of a film with 5 × 10⁹ white cells per litre" in text(html)
    # What lies outside, in one line above the tables: 5 monocytes of 100 are inside 2-8 %.
    assert ("Outside the reference intervals: Lymphocyte 70.0 % high; Neutrophil 20.0 % low; "
            "Neutrophil 1.00 × 10⁹/L low.") in findings_text(html)


def test_the_result_page_gives_the_lab_s_own_interval_beside_the_catalog_s(tmp_path,
                                                                          tiny_model_dir):
    root = make_models_root(tmp_path / "models", tiny_model_dir)
    client = make_app(tmp_path, root, REFERENCE_INTERVALS={"neutrophil": [40, 75]},
                      ABSOLUTE_REFERENCE_INTERVALS={"neutrophil": [1.8, 7.7]}).test_client()
    batch_id = stored_batch(client, [result("neutrophil", classes=WBC4),
                                     result("lymphocyte", classes=WBC4)], WBC4)
    assert ("This lab's reference intervals: 40–75 % of white cells; 1.8–7.7 x 10^9/L."
            in text(page(client, f"/batch/{batch_id}/0")))
    assert 'id="lab-reference"' not in page(client, f"/batch/{batch_id}/1")  # the catalog's


def test_the_differential_downloads_as_a_csv_with_its_flags_and_counts_per_litre(client):
    cells = film({"neutrophil": 20, "lymphocyte": 70, "monocyte": 6, "eosinophil": 4}, PBC8)
    batch_id = stored_batch(client, cells + [result("platelet")], PBC8)
    save_sample(client, batch_id, sample_id="=H-2026-7", wbc="5")
    html = client.get(f"/batch/{batch_id}").get_data(as_text=True)
    link = re.search(r'href="([^"]+)" id="differential-csv"', html).group(1)
    assert link == f"/batch/{batch_id}/differential.csv"
    response = client.get(link)
    assert response.mimetype == "text/csv" and "attachment" in response.headers[
        "Content-Disposition"]
    # UTF-8 with a byte order mark, which Excel needs to read it as UTF-8.
    assert response.data.startswith(b"\xef\xbb\xbfclass,")
    assert "\ufeff" not in response.get_data(as_text=True)[1:]
    rows = {r["class"]: r for r in csv.DictReader(csv_of(response.get_data(as_text=True)))}
    assert list(rows) == [c for c in PBC8 if c not in ("erythroblast", "platelet")] + [
        "erythroblast", "platelet"]
    neutrophils = rows["neutrophil"]
    assert (neutrophils["count"], neutrophils["percent"], neutrophils["flag"]) == (
        "20", "20.0", "low")
    assert (neutrophils["per_litre"], neutrophils["per_litre_low"], neutrophils["per_litre_high"],
            neutrophils["per_litre_reference_low"], neutrophils["per_litre_flag"]) == (
        "1.00", "0.63", "1.46", "2", "low")
    assert (rows["lymphocyte"]["flag"], rows["lymphocyte"]["per_litre_flag"]) == ("high", "")
    assert rows["platelet"]["per_100_white"] == "" and rows["platelet"]["white_cell"] == "no"
    assert rows["platelet"]["count"] == "1"
    assert {r["white_cells"] for r in rows.values()} == {"100"}
    assert {r["white_cells_per_litre"] for r in rows.values()} == {"5"}
    # The sample ID on every row, made inert for a spreadsheet, and in the file's name.
    assert {r["sample"] for r in rows.values()} == {"'=H-2026-7"}
    assert 'filename="hematovision-H-2026-7-' in response.headers["Content-Disposition"]
    # Without a total count no row has a count per litre.
    save_sample(client, batch_id)
    rows = list(csv.DictReader(csv_of(client.get(link).get_data(as_text=True))))
    assert all(r["per_litre"] == "" and r["white_cells_per_litre"] == "" and r["sample"] == ""
               for r in rows)


def test_the_differential_csv_holds_flags_back_while_cells_await_review(client):
    cells = film({"neutrophil": 20, "lymphocyte": 80}, WBC4)
    batch_id = stored_batch(client, cells + [result("monocyte", "unidentified", WBC4)], WBC4)
    text_csv = client.get(f"/batch/{batch_id}/differential.csv").get_data(as_text=True)
    rows = list(csv.DictReader(csv_of(text_csv)))
    assert all(r["flag"] == "" and r["awaiting_review"] == "1" for r in rows)


def test_nucleated_red_cells_are_flagged_beside_the_differential_once_reviewed(client):
    cells = film({"neutrophil": 58, "lymphocyte": 36, "monocyte": 4, "eosinophil": 2,
                  "erythroblast": 3}, PBC8)
    batch_id = stored_batch(client, cells + [result("platelet")], PBC8)
    html = page(client, f"/batch/{batch_id}")
    table = html.split('id="other-cells"')[1].split("</table>")[0]
    rows = {name: text(row).split() for name, row in re.findall(
        r'<tr data-class="(\w+)">(.*?)</tr>', table, re.S)}
    # 3 beside 100 white cells: 0.6-9.0 per 100 by counting, and an adult has none.
    assert rows["erythroblast"][-6:] == ["3", "3.0", "0.6–9.0", "0", "▲", "high"]
    assert rows["platelet"][-4:] == ["1", "—", "—", "—"]  # a count alone
    assert ("Outside the reference intervals: Erythroblast (nucleated red cell) 3.0 per 100 white "
            "cells high.") in findings_text(html)
    # While a cell awaits review, no flag, as for the shares.
    held = stored_batch(client, cells + [result("neutrophil", "unidentified")], PBC8)
    table = page(client, f"/batch/{held}").split('id="other-cells"')[1].split("</table>")[0]
    assert "share-flag" not in table and "not flagged until" in text(table)



def test_a_class_the_catalog_does_not_know_is_named_described_and_said_to_go_unflagged(
        tmp_path, tiny_model_dir):
    """A researcher's model with a class "smudge_cell": named as the catalog's classes are,
    said to be the model's own where a description would be, and said to have no reference
    interval where a share of it would go unflagged; examples of other white cells leave out
    what it names."""
    from tests.web_helpers import batch_as_said

    classes = ["basophil", "blast", "lymphocyte", "smudge_cell"]
    root = make_models_root(tmp_path / "m", tiny_model_dir, names=("mine",),
                            card={"classes": classes})
    client = make_app(tmp_path, root, DEFAULT_MODEL="mine").test_client()
    batch_id = batch_as_said(client, "mine", [("smudge_cell", "accepted", 0.97),
                                              ("lymphocyte", "accepted", 0.99),
                                              ("blast", "unidentified", 0.5)])
    html = page(client, f"/batch/{batch_id}")
    note = text(re.search(r'id="no-reference-note">(.*?)</span>', html, re.S).group(1))
    assert note.strip() == ("No reference interval is set for Blast, Smudge cell: their shares "
                            "are never flagged high or low (whoever runs the server can set "
                            "the lab's own).")
    assert "(such as variant lymphocytes)" in text(html)  # blasts and basophils it names
    result = page(client, f"/batch/{batch_id}/0")
    assert "About the smudge cell" in text(result)
    assert re.search(r"catalog does not describe this class: it is one of\s+mine's own, named "
                     r"<code>smudge_cell</code>", result)
    assert "No reference interval is set for it" in text(result)
    assert "a type mine does not name (variant lymphocyte…)" in text(page(
        client, f"/batch/{batch_id}/2"))
    listing = text(page(client, f"/batch/{batch_id}/review?show=all"))
    assert "Other white cell (variant lymphocyte…)" in listing and "blast, " not in listing
    # A lab's own interval for it is shown instead, and the note names the other alone.
    lab = make_app(tmp_path, root, DEFAULT_MODEL="mine",
                   REFERENCE_INTERVALS={"smudge_cell": [0, 2]}).test_client()
    assert "This lab's reference interval: 0–2 % of white cells." in text(
        page(lab, f"/batch/{batch_id}/0"))
    note = re.search(r'id="no-reference-note">(.*?)</span>', page(lab, f"/batch/{batch_id}"),
                     re.S).group(1)
    assert text(note).strip().startswith("No reference interval is set for Blast: its share")


def test_flags_held_name_a_field_s_cells_as_cells_not_images(client):
    """Two cells of one field called not a blood-cell image: the set-aside note said '2 cells
    of fields', the flags' note '2 images'."""
    from tests.web_helpers import batch_as_said

    batch_id = batch_as_said(client, "tiny", [
        ("lymphocyte", "accepted", 0.99), ("lymphocyte", "accepted", 0.99),
        ("monocyte", "not_a_cell", 0.4), ("monocyte", "not_a_cell", 0.4)])

    def one_field(batch):
        first, second = batch["results"][2:]
        second.update(file=first["file"], image=first["image"])
        first.update(cell={"number": 1, "of": 2, "centre": [0.3, 0.5]}, white_cells=2)
        second.update(cell={"number": 2, "of": 2, "centre": [0.7, 0.5]}, white_cells=2)

    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id, one_field)
    html = page(client, f"/batch/{batch_id}")
    held = text(re.search(r'<span id="flags-held">(.*?)</span>', html, re.S).group(1))
    assert held.strip() == ("Shares are not flagged against it until the 2 cells of fields "
                            "called not a blood-cell image are looked at.")
    assert ("no share is flagged until the 2 cells of fields called not a blood-cell image are "
            "looked at") in text(page(client, f"/batch/{batch_id}/report"))
