"""The sample a batch counts (hematovision.web.sample): its ID and total white-cell count, read
from the batch page's form, kept with the batch through reviews, and shown on the pages, the
printed report and the CSV files."""

import csv

import pytest

from hematovision.differential import differential, differential_json
from hematovision.web import sample
from hematovision.web.sample import Sample
from tests.test_differential import PBC8, WBC4, film, result
from tests.test_web_results import stored_batch
from tests.web_helpers import (csrf_token, csv_of, deleted_before_every_update, make_app,
                               make_models_root, page, prose, save_sample, stored_json, text)


@pytest.fixture
def client(tmp_path, tiny_model_dir):
    app = make_app(tmp_path, make_models_root(tmp_path / "models", tiny_model_dir))
    return app.test_client()


@pytest.mark.parametrize("typed, canonical", [
    ("  H-2026-01234 ", "H-2026-01234"),
    ("Lab 3 / 12#b", "Lab 3 / 12#b"),
    ("Mu\u0308ller-7", "Müller-7"),  # decomposed umlaut, stored composed (NFC)
    ("", ""),
])
def test_a_sample_id_is_kept_as_typed_made_canonical(typed, canonical):
    assert sample.sample_id(typed) == canonical


@pytest.mark.parametrize("typed", [
    "A" * (sample.MAX_ID_LENGTH + 1),
    "H-1\nH-2",  # a line break would split a CSV row or a report line
    "H-1\x00",
    "H-1\u202e7",  # right-to-left override: the ID would print reversed
    "H\u200b1",  # zero-width space: two IDs that look the same would differ
    "\u3164",  # a Hangul filler: a letter that prints as nothing
    "--",  # no letter or digit to tell samples apart
])
def test_a_sample_id_refuses_long_control_and_invisible_text(typed):
    with pytest.raises(ValueError, match="A sample ID is at most 40 letters"):
        sample.sample_id(typed)


def test_the_form_gives_every_refused_field_its_message_and_empty_fields_clear():
    described, form = sample.read_form({"sample_id": "H\x001", "wbc": "6500"})
    assert described is None and set(form.errors) == {"sample_id", "wbc"}
    assert form.typed == {"sample_id": "H\x001", "wbc": "6500", "wbc_includes_nrbc": ""}
    described, form = sample.read_form({"sample_id": " H-1 ", "wbc": "6,5",
                                        "wbc_includes_nrbc": "on"})
    assert described == Sample("H-1", 6.5, True) and not form.errors
    assert sample.read_form({})[0] == Sample()
    assert sample.form_of(Sample("H-1", 6.5)).typed == {"sample_id": "H-1", "wbc": "6.5",
                                                        "wbc_includes_nrbc": ""}


def test_the_sample_is_saved_with_the_batch_and_kept_through_reviews(client):
    cells = film({"neutrophil": 20, "lymphocyte": 70, "monocyte": 6, "eosinophil": 4}, WBC4)
    batch_id = stored_batch(client, cells + [result("monocyte", "unidentified", WBC4)], WBC4)
    response = save_sample(client, batch_id, sample_id="H-2026-01234", wbc="5")
    assert response.status_code == 303 and response.headers["Location"] == f"/batch/{batch_id}"
    assert stored_json(client, batch_id)["sample"]["id"] == "H-2026-01234"
    html = page(client, f"/batch/{batch_id}")
    assert "Saved the sample's details." in text(html)
    assert "<title>Sample H-2026-01234 · Batch of 101 images" in html
    assert 'value="H-2026-01234"' in html and 'value="5"' in html  # the form, filled in
    assert ("Sample H-2026-01234. White-cell count 5 × 10⁹/L. HematoVision, model tiny"
            in prose(html.split('id="print-note"')[1].split("</p>")[0]))
    assert 'id="absolute"' in html
    # A review changes the stored batch: the sample stays, so the page still counts per litre.
    client.post(f"/batch/{batch_id}/100/review",
                data={"csrf_token": csrf_token(client), "verdict": "monocyte"})
    html = page(client, f"/batch/{batch_id}")
    assert 'id="absolute"' in html and "Sample H-2026-01234 ·" in html
    result_page = page(client, f"/batch/{batch_id}/0")
    assert "Sample H-2026-01234 ·" in result_page  # the breadcrumb, and the printed page:
    assert ("Sample H-2026-01234. HematoVision, model tiny, model version not recorded (uploaded "
            "before versions were), result 1 of 101 of a batch uploaded" in text(result_page.split('id="print-note"')[1].split("</p>")[0]))
    assert "Sample H-2026-01234 ·" in page(client, f"/batch/{batch_id}/review?show=all")
    for download, ending in ((".csv", ".csv"), ("/differential.csv", "-differential.csv"),
                             ("/reviewed.zip", "-reviewed.zip")):  # the cell reviewed above
        assert client.get(f"/batch/{batch_id}{download}").headers["Content-Disposition"] == (
            f'attachment; filename="hematovision-H-2026-01234-{batch_id[:8]}{ending}"')
    # The reviewed cells' table groups them by sample, for a training split by source.
    assert sample.source_group(stored_json(client, batch_id)) == "sample:H-2026-01234"
    # Empty fields clear both.
    save_sample(client, batch_id)
    html = page(client, f"/batch/{batch_id}")
    assert "Cleared the sample's details." in text(html)
    assert 'id="absolute"' not in html and "Sample H-2026" not in html
    assert sample.source_group(stored_json(client, batch_id)) == f"batch:{batch_id}"


@pytest.mark.parametrize("fields, field_error, message", [
    ({"wbc": "6500"}, "wbc-error", "must be a number of 10^9 cells per litre"),
    ({"wbc": "abc"}, "wbc-error", "must be a number of 10^9 cells per litre"),
    ({"sample_id": "H-1\u202e7", "wbc": "7"}, "sample-id-error", "A sample ID is at most 40"),
])
def test_a_refused_field_gets_the_page_with_a_message_and_400_keeping_what_was_stored(
        client, fields, field_error, message):
    batch_id = stored_batch(client, film({"neutrophil": 3, "lymphocyte": 2}, WBC4), WBC4)
    save_sample(client, batch_id, sample_id="H-1", wbc="5")
    response = save_sample(client, batch_id, **fields)
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert f'id="{field_error}"' in html and message in text(html)
    assert f'value="{fields["wbc"]}"' in html  # as typed, to correct it
    assert stored_json(client, batch_id)["sample"]["id"] == "H-1"
    assert stored_json(client, batch_id)["sample"]["white_cells_per_litre"] == 5.0
    assert "of a film with 5 × 10⁹ white cells per litre" in text(html)  # the stored count


def test_a_sample_id_is_shown_as_text_never_as_markup(client):
    batch_id = stored_batch(client, film({"neutrophil": 2}, WBC4), WBC4)
    assert save_sample(client, batch_id, sample_id="<b>x</b>").status_code == 303
    html = page(client, f"/batch/{batch_id}")
    assert "<b>x</b>" not in html and "Sample &lt;b&gt;x&lt;/b&gt;" in html
    disposition = client.get(f"/batch/{batch_id}.csv").headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="hematovision-b_x_b-')


@pytest.mark.parametrize("form, field, key", [("sample", "wbc", "sample"),
                                              ("manual", "manual_neutrophil", "manual")])
def test_the_batch_page_forms_need_the_form_token_a_batch_and_a_differential(client, form,
                                                                              field, key):
    batch_id = stored_batch(client, film({"neutrophil": 2}, WBC4), WBC4)
    assert client.post(f"/batch/{batch_id}/{form}", data={field: "5"}).status_code == 400
    assert key not in stored_json(client, batch_id)

    def post(batch_id: str):
        return client.post(f"/batch/{batch_id}/{form}",
                           data={"csrf_token": csrf_token(client), field: "5"})

    assert post("0" * 32).status_code == 404
    response = post(stored_batch(client, film({"neutrophil": 1}, WBC4), WBC4))
    assert response.status_code == 400 and "add images to this batch first" in text(
        response.get_data(as_text=True))


def test_a_sample_saved_as_the_batch_is_deleted_brings_nothing_back(client, monkeypatch):
    batch_id = stored_batch(client, film({"neutrophil": 2}, WBC4), WBC4)
    gone = deleted_before_every_update(monkeypatch, client, batch_id)
    assert save_sample(client, batch_id, wbc="5").status_code == 404
    assert not gone.exists()


def test_a_count_that_includes_nucleated_red_cells_is_corrected_for_those_counted(client):
    cells = film({"neutrophil": 60, "lymphocyte": 40, "erythroblast": 10}, PBC8)
    counted = differential(cells, PBC8, white_cells_per_litre=11.0,
                                   count_includes_nucleated_red_cells=True)
    assert counted.white_cells_per_litre == pytest.approx(10.0)  # 11.0 x 100 / 110
    assert counted.uncorrected_white_cells_per_litre == 11.0
    neutrophils = next(s for s in counted.shares if s.name == "neutrophil")
    assert neutrophils.absolute.value == 6.0
    body = differential_json(counted)
    assert body["uncorrected_white_cells_per_litre"] == 11.0
    # Not ticked, or no nucleated red cell counted: the count as given.
    assert differential(cells, PBC8, white_cells_per_litre=11.0
                                ).uncorrected_white_cells_per_litre is None
    plain = differential(film({"neutrophil": 60}, PBC8), PBC8, white_cells_per_litre=11.0,
                                 count_includes_nucleated_red_cells=True)
    assert plain.white_cells_per_litre == 11.0 and plain.uncorrected_white_cells_per_litre is None

    batch_id = stored_batch(client, cells, PBC8)
    html = page(client, f"/batch/{batch_id}")
    assert 'id="wbc-includes-nrbc"' in html  # a model that names nucleated red cells
    save_sample(client, batch_id, wbc="11", wbc_includes_nrbc="on")
    html = page(client, f"/batch/{batch_id}")
    assert 'id="wbc-includes-nrbc" name="wbc_includes_nrbc" value="on" checked' in html
    assert ("of a film with 10.00 × 10⁹ white cells per litre (the analyzer's 11, which "
            "included the nucleated red cells, times the white cells' share of the nucleated cells "
            "counted: 100 of 110)") in text(html)
    rows = list(csv.DictReader(csv_of(
        client.get(f"/batch/{batch_id}/differential.csv").get_data(as_text=True))))
    assert {(r["white_cells_per_litre"], r["uncorrected_white_cells_per_litre"])
            for r in rows} == {("10", "11")}
    # A model without such a class has nothing to correct by: no box.
    wbc4 = stored_batch(client, film({"neutrophil": 2}, WBC4), WBC4)
    assert 'id="wbc-includes-nrbc"' not in page(client, f"/batch/{wbc4}")
