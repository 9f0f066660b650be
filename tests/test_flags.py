"""How often the reference-interval flags are right on drawn films (training.flags), on a
made-up model's answers: no model is read."""

from types import SimpleNamespace

import numpy as np
import pytest

from hematovision.reference import ABOVE, BELOW, intervals
from training.flags import NORMAL, WAYS, scenario_compositions, score_films, true_side

CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def answers(labels_of=None, unidentified=(), classes=CLASSES):
    """50 test images per class of `classes`; the model names each right (or as `labels_of`
    maps its class) and accepts it, except those of the classes in `unidentified`."""
    truth = np.repeat(np.arange(len(classes)), 50)
    mapped = {classes.index(a): classes.index(b) for a, b in (labels_of or {}).items()}
    labels = np.array([mapped.get(t, t) for t in truth])
    statuses = np.array(["unidentified" if classes[t] in unidentified else "accepted"
                         for t in truth])
    return SimpleNamespace(predictor=SimpleNamespace(classes=classes), truth=truth,
                           labels=labels, statuses=statuses)


def test_scenarios_raise_or_lower_one_class_and_scale_the_rest():
    found = scenario_compositions(CLASSES, np.arange(4))
    assert set(found) == {NORMAL, "neutrophilia", "neutropenia", "lymphocytosis",
                          "monocytosis", "eosinophilia"}  # no basophil, no ig: not scored
    target, composition, beside = found["eosinophilia"]
    assert target == "eosinophil" and composition["eosinophil"] == pytest.approx(0.12)
    assert beside == {}
    assert sum(composition.values()) == pytest.approx(1.0)
    normal = found[NORMAL][1]
    assert found[NORMAL][2] == {}
    assert composition["lymphocyte"] / composition["neutrophil"] == pytest.approx(
        normal["lymphocyte"] / normal["neutrophil"])
    # A model without test images of a class gets no scenario for it.
    assert "monocytosis" not in scenario_compositions(CLASSES, np.array([0, 1, 3]))


def test_true_side_of_an_interval():
    assert true_side(0.12, (1, 4)) == ABOVE and true_side(0.005, (1, 4)) == BELOW
    assert true_side(0.03, (1, 4)) is None and true_side(0.5, None) is None


def test_a_model_that_names_every_cell_right_is_flagged_as_the_counting_alone():
    reference = intervals()
    _, composition, _ = scenario_compositions(CLASSES, np.arange(4))["eosinophilia"]
    scored = score_films(answers(), composition, "eosinophil", reference, draws=400)
    ways = scored["ways"]
    assert set(ways) == set(WAYS)
    assert len({(w["detected"], w["false_flag"]) for w in ways.values()}) == 1
    assert 0.7 < ways["every cell named right"]["detected"] < 0.95  # 12 of 100: mostly found
    assert scored["unidentified_per_film"] == 0


def test_cells_left_unidentified_make_the_accepted_ones_flag_a_normal_film_wrongly():
    reference = intervals()
    _, normal, _ = scenario_compositions(CLASSES, np.arange(4))[NORMAL]
    scored = score_films(answers(unidentified=("neutrophil",)), normal, None, reference,
                         draws=200)
    ways = scored["ways"]
    # Without the neutrophils, lymphocytes read about 77 %: above 20-40 % in every film.
    assert ways["accepted only"]["false_flag"] == 1.0
    assert ways["accepted only"]["flagged"]["lymphocyte"][ABOVE] > 0.95
    assert ways["accepted only"]["flagged"]["neutrophil"][BELOW] == 1.0  # none counted
    assert ways["accepted only"]["detected"] is None
    assert ways["unidentified reviewed"]["false_flag"] < 0.05
    assert scored["unidentified_per_film"] == pytest.approx(61, abs=5)


def test_a_model_that_confuses_two_classes_misses_the_raised_one():
    reference = intervals()
    _, composition, _ = scenario_compositions(CLASSES, np.arange(4))["eosinophilia"]
    scored = score_films(answers(labels_of={"eosinophil": "neutrophil"}), composition,
                         "eosinophil", reference, draws=200)
    assert scored["ways"]["no trust layer"]["detected"] == 0.0
    assert scored["ways"]["every cell named right"]["detected"] > 0.7


EIGHT = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
         "platelet"]


def test_nucleated_red_cells_are_a_scenario_beside_a_normal_film_and_flagged_when_counted():
    reference = intervals()
    found = scenario_compositions(EIGHT, np.arange(8))
    target, composition, beside = found["nucleated red cells"]
    assert target == "erythroblast" and beside == {"erythroblast": 0.05}
    assert composition == found[NORMAL][1]  # the white cells as on a normal film
    scored = score_films(answers(classes=EIGHT), composition, target, reference, draws=400,
                         beside=beside)
    right = scored["ways"]["every cell named right"]
    # 5 per 100 white cells: a count of 100 sees none in e^-5 = 0.7 % of films.
    assert 0.97 < right["detected"] < 1.0
    assert right["flagged"]["erythroblast"][ABOVE] == right["detected"]
    assert scored["beside"] == {"erythroblast": 0.05}
    # A model that names monocytes erythroblasts flags a normal film that has none.
    normal = score_films(answers({"monocyte": "erythroblast"}, classes=EIGHT), found[NORMAL][1],
                         None, reference, draws=400)
    assert normal["ways"]["every cell named right"]["false_flag"] < 0.05
    assert normal["ways"]["accepted only"]["flagged"]["erythroblast"][ABOVE] > 0.9
    assert normal["ways"]["accepted only"]["false_flag"] > 0.9
