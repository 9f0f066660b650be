"""hematovision.web.manual and the batch page's manual count: the technologist's count of the
same film, kept with the batch and compared class by class with its differential, on the page,
the printed report and the differential CSV; refused fields get a message and a 400."""

import csv
import re

import pytest

from hematovision.comparison import MAX_MANUAL_CELLS
from hematovision.web import manual
from tests.test_differential import PBC8, WBC4, film, result
from tests.test_web_results import stored_batch
from tests.web_helpers import (csrf_token, csv_of, deleted_before_every_update, make_app,
                               make_models_root, page, stored_json, text)

FILM = {"neutrophil": 60, "lymphocyte": 30, "monocyte": 6, "eosinophil": 4}


@pytest.fixture
def client(tmp_path, tiny_model_dir):
    app = make_app(tmp_path, make_models_root(tmp_path / "models", tiny_model_dir))
    return app.test_client()


def comparison_table(html: str) -> str:
    return html.split('id="manual-comparison"')[1].split("</table>")[0]


def save_manual(client, batch_id: str, **counts: str):
    return client.post(f"/batch/{batch_id}/manual", data={
        "csrf_token": csrf_token(client), **{f"manual_{c}": n for c, n in counts.items()}})


def test_the_form_has_a_field_per_white_cell_class_the_others_and_nucleated_red_cells():
    assert manual.field_names(PBC8) == [
        "manual_basophil", "manual_eosinophil", "manual_ig", "manual_lymphocyte",
        "manual_monocyte", "manual_neutrophil", "manual_other",
        "manual_erythroblast"]  # no platelets: a differential does not count them
    assert manual.field_names(WBC4)[-1] == "manual_other"


def test_nucleated_red_cells_are_read_beside_the_white_cells_they_are_counted_per():
    counted, _ = manual.read_form({"manual_neutrophil": "60", "manual_lymphocyte": "40",
                                   "manual_erythroblast": "3"}, PBC8)
    assert counted.beside == {"erythroblast": 3} and counted.total == 100
    counted, form = manual.read_form({"manual_erythroblast": "3"}, PBC8)
    assert counted is None and form.errors == {"": manual.NO_WHITE_CELL}
    stored = {}
    manual.store(stored, manual.read_form({"manual_neutrophil": "5",
                                           "manual_erythroblast": "2"}, PBC8)[0], at=0.0)
    assert manual.of(stored).beside == {"erythroblast": 2}
    assert manual.form_of(manual.of(stored)).typed["manual_erythroblast"] == "2"


def test_empty_fields_count_none_and_the_count_is_of_whole_cells():
    counted, form = manual.read_form({"manual_neutrophil": " 62 ", "manual_other": "1"}, WBC4)
    assert counted == manual.ManualCount(
        {"eosinophil": 0, "lymphocyte": 0, "monocyte": 0, "neutrophil": 62}, other=1)
    assert counted.total == 63 and form.errors == {}
    assert manual.read_form({}, WBC4)[0].total == 0  # every field empty: no count
    for typed in ["-1", "1.5", "6,0", "many", "1e3", "١٢", "10001"]:
        counted, form = manual.read_form({"manual_monocyte": typed}, WBC4)
        assert counted is None and form.typed["manual_monocyte"] == typed
        assert form.errors == {"manual_monocyte": manual.BAD_COUNT.format(
            top=MAX_MANUAL_CELLS, typed=typed)}
    counted, form = manual.read_form({"manual_neutrophil": "6000", "manual_lymphocyte": "6000"},
                                     WBC4)
    assert counted is None and form.errors == {"": "A manual count of at most 10,000 cells is "
                                                   "compared; these add up to 12,000."}


def test_a_manual_count_is_compared_class_by_class_and_kept_through_reviews(client):
    cells = film(FILM, WBC4) + [result("monocyte", "unidentified", WBC4)]
    batch_id = stored_batch(client, cells, WBC4)
    assert 'id="manual-comparison"' not in page(client, f"/batch/{batch_id}")
    response = save_manual(client, batch_id, neutrophil="35", lymphocyte="55", monocyte="5",
                           eosinophil="3", other="2")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/batch/{batch_id}#manual-title"
    assert stored_json(client, batch_id)["manual"]["counts"] == {
        "eosinophil": 3, "lymphocyte": 55, "monocyte": 5, "neutrophil": 35}
    html = page(client, f"/batch/{batch_id}")
    assert "Saved your manual count of 100 white cells" in text(html)
    table = comparison_table(html)
    rows = {m[1]: text(m[2]).strip() for m in re.finditer(
        r'<tr data-class="([\w-]+)"[^>]*>(.*?)</tr>', table, re.S)}
    assert rows["neutrophil"].startswith("Neutrophil 60.0 (60) 35.0 (35) +25.0")
    assert "beyond counting error" in rows["neutrophil"]
    assert "beyond counting error" in rows["lymphocyte"] and "-25.0" in rows["lymphocyte"]
    assert "beyond counting error" not in rows["monocyte"]  # 6 against 5 in 100
    assert ('(2 of classes tiny does not name, on the row "Other white cell", against the cells '
            'you reviewed as such)') in text(table)
    # The basophils wbc4 cannot name, against none in the batch: what a lab must not miss.
    assert rows["other-white-cell"].startswith("Other white cell 0.0 (0) 2.0 (2) -2.0")
    assert "does not count its 1 unidentified cell yet" in text(table)
    # The form shows what was stored; a review leaves the count in place and moves the batch.
    assert re.search(r'name="manual_neutrophil"\s+value="35"', html)
    assert re.search(r'name="manual_other"\s+value="2"', html)
    client.post(f"/batch/{batch_id}/100/review",
                data={"csrf_token": csrf_token(client), "verdict": "monocyte"})
    html = page(client, f"/batch/{batch_id}")
    assert 'id="manual-awaiting"' not in html
    assert "Monocyte 6.9 (7) 5.0 (5) +1.9" in text(comparison_table(html))

    save_manual(client, batch_id)  # every field empty
    html = page(client, f"/batch/{batch_id}")
    assert "Cleared the manual count." in text(html) and 'id="manual-comparison"' not in html
    assert "manual" not in stored_json(client, batch_id)


def test_the_differential_csv_carries_the_manual_count(client):
    batch_id = stored_batch(client, film(FILM, WBC4), WBC4)
    blank = list(csv.DictReader(csv_of(
        client.get(f"/batch/{batch_id}/differential.csv").get_data(as_text=True))))
    assert {row["manual_count"] for row in blank} == {""}
    save_manual(client, batch_id, neutrophil="35", lymphocyte="55", monocyte="5", eosinophil="5")
    rows = {row["class"]: row for row in csv.DictReader(csv_of(
        client.get(f"/batch/{batch_id}/differential.csv").get_data(as_text=True)))}
    neutrophils = rows["neutrophil"]
    assert (neutrophils["count"], neutrophils["manual_count"], neutrophils["manual_percent"],
            neutrophils["manual_difference"], neutrophils["manual_white_cells"]) == (
        "60", "35", "35.0", "25.0", "100")
    assert float(neutrophils["manual_p_value"]) < 0.001
    assert float(rows["monocyte"]["manual_p_value"]) > 0.05


def test_a_refused_field_gets_the_page_with_a_message_and_400_keeping_what_was_stored(client):
    batch_id = stored_batch(client, film(FILM, WBC4), WBC4)
    save_manual(client, batch_id, neutrophil="35", lymphocyte="65")
    response = save_manual(client, batch_id, neutrophil="35", lymphocyte="sixty")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "A count of cells is a whole number from 0 to 10,000; 'sixty' is not." in text(html)
    assert 'value="sixty"' in html and 'id="manual-details" open' in html
    assert stored_json(client, batch_id)["manual"]["counts"]["lymphocyte"] == 65  # kept
    assert 'id="manual-comparison"' in html  # the stored comparison still shown


def test_a_manual_count_saved_as_the_batch_is_deleted_brings_nothing_back(client, monkeypatch):
    batch_id = stored_batch(client, film(FILM, WBC4), WBC4)
    gone = deleted_before_every_update(monkeypatch, client, batch_id)
    assert save_manual(client, batch_id, neutrophil="5").status_code == 404
    assert not gone.exists()


def test_without_a_counted_white_cell_there_is_no_manual_comparison_form(client):
    batch_id = stored_batch(client, [result("neutrophil", "unidentified", WBC4)] * 2, WBC4)
    assert 'id="manual-form"' not in page(client, f"/batch/{batch_id}")


def test_nucleated_red_cells_are_compared_per_100_white_cells(client):
    cells = film({"neutrophil": 60, "lymphocyte": 40, "erythroblast": 12}, PBC8)
    batch_id = stored_batch(client, cells, PBC8)
    assert 'id="manual_erythroblast"' in page(client, f"/batch/{batch_id}")
    save_manual(client, batch_id, neutrophil="55", lymphocyte="45", erythroblast="2")
    table = comparison_table(page(client, f"/batch/{batch_id}"))
    row = re.search(r'<tr data-class="erythroblast"[^>]*>(.*?)</tr>', table, re.S)
    assert text(row[1]).split() == ["Erythroblast", "(nucleated", "red", "cell),", "per", "100",
                                    "white", "cells", "12.0", "(12)", "2.0", "(2)", "+10.0", "≠",
                                    "beyond", "counting", "error"]
    assert "the nucleated red cells per 100 white cells" in text(table)
    rows = {row["class"]: row for row in csv.DictReader(csv_of(
        client.get(f"/batch/{batch_id}/differential.csv").get_data(as_text=True)))}
    assert (rows["erythroblast"]["manual_count"], rows["erythroblast"]["manual_percent"],
            rows["erythroblast"]["manual_difference"]) == ("2", "2.0", "10.0")
    assert rows["platelet"]["manual_count"] == ""
