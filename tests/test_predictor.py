import json
import re

import numpy as np
import pytest

from hematovision.card import ModelLoadError
from hematovision.predictor import Predictor, available_models
from hematovision.preprocess import to_input
from tests.conftest import CLASSES, make_image, make_smear, with_nuclei
from tests.web_helpers import make_models_root


def test_predictor_reads_card_and_returns_ordered_probabilities(tiny_model_dir, tmp_path):
    predictor = Predictor(tiny_model_dir)
    assert predictor.classes == CLASSES
    prediction = predictor.predict(make_image(tmp_path / "a.jpg", (200, 60, 60)))
    assert list(prediction.probabilities) == CLASSES
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction.label == max(prediction.probabilities, key=prediction.probabilities.get)
    assert prediction.confidence == prediction.probabilities[prediction.label]


def test_litert_matches_keras_on_fixed_images(tiny_model_dir, tiny_keras_model, tmp_path):
    from hematovision.preprocess import preprocess
    from training.export import reference_probabilities

    files = [make_image(tmp_path / f"{i}.png", (40 * i, 90, 200 - 30 * i), fmt="PNG")
             for i in range(5)]
    batch = np.stack([preprocess(f) for f in files])
    served = Predictor(tiny_model_dir).predict_arrays(batch)
    # The served model averages the four flipped views (test-time augmentation).
    expected = reference_probabilities(tiny_keras_model, batch, views=4)
    assert np.max(np.abs(served - expected)) < 1e-5


def test_batches_larger_than_the_chunk_size_match_single_calls(tiny_model_dir):
    predictor = Predictor(tiny_model_dir)
    batch = np.random.default_rng(1).uniform(-1, 1, (40, 224, 224, 3)).astype(np.float32)
    together = predictor.predict_arrays(batch)
    one_by_one = np.concatenate([predictor.predict_arrays(batch[i : i + 1]) for i in range(40)])
    assert together.shape == (40, 4)
    np.testing.assert_allclose(together, one_by_one, atol=1e-6)


def test_a_model_serving_more_views_runs_fewer_images_per_call(tiny_model_dir, tmp_path,
                                                                monkeypatch):
    import shutil

    from hematovision import predictor

    monkeypatch.setattr(predictor, "VIEWS_PER_CALL", 64)
    folder = tmp_path / "eight"
    shutil.copytree(tiny_model_dir, folder)
    card = json.loads((folder / "model_card.json").read_text())
    card["test_time_augmentation"]["views"] = [f"view {v}" for v in range(8)]
    (folder / "model_card.json").write_text(json.dumps(card))
    four, eight = Predictor(tiny_model_dir), Predictor(folder)
    assert (four.images_per_call, eight.images_per_call) == (16, 8)
    calls = []
    run = eight._run
    eight._run = lambda chunk, wanted: calls.append(len(chunk)) or run(chunk, wanted)
    batch = np.random.default_rng(2).uniform(-1, 1, (20, 224, 224, 3)).astype(np.float32)
    np.testing.assert_allclose(eight.predict_arrays(batch), four.predict_arrays(batch), atol=1e-6)
    assert calls == [8, 8, 4]
    monkeypatch.setattr(predictor, "VIEWS_PER_CALL", 4)  # fewer views than served: one image
    assert Predictor(folder).images_per_call == 1


def test_wrong_input_shape_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="shape"):
        Predictor(tiny_model_dir).predict_arrays(np.zeros((1, 100, 100, 3)))


def test_missing_model_folder_names_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match=str(tmp_path / "nope")):
        Predictor(tmp_path / "nope")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short"])
def test_a_trust_file_being_copied_in_gives_a_clear_error(models_root, content):
    """A copy creates the file empty before writing it: np.load's EOFError, not a crash."""
    (models_root / "tiny" / "trust.npz").write_bytes(content)
    with pytest.raises(ModelLoadError, match="The trust layer of .* cannot be used"):
        Predictor(models_root / "tiny")


def test_a_serving_file_written_over_while_loaded_leaves_the_loaded_model_working(
        tiny_model_dir, tmp_path):
    """Run apart: a model mapped from its file dies of SIGBUS once the file is cut short (an
    export or a copy into the served folder), which would end the test run itself."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    folder = tmp_path / "served"
    shutil.copytree(tiny_model_dir, folder)
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from hematovision.predictor import Predictor\n"
        "p = Predictor(sys.argv[1])\n"
        "(Path(sys.argv[1]) / 'model.tflite').write_bytes(b'')  # a copy begun over it\n"
        "size = p.card['input_size'][0]\n"
        "print(p.predict_arrays(np.zeros((1, size, size, 3), np.float32)).shape)\n")
    done = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    classes = json.loads((folder / "model_card.json").read_text())["classes"]
    assert done.stdout.strip() == f"(1, {len(classes)})"


def test_corrupt_serving_file_gives_a_clear_error(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_card.json").write_text((tiny_model_dir / "model_card.json").read_text())
    (broken / "model.tflite").write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ModelLoadError, match="corrupt"):
        Predictor(broken)


def test_a_card_with_an_unknown_crop_is_refused_at_load(tiny_model_dir, tmp_path):
    """Not on the first request: every upload would fail."""
    odd = tmp_path / "odd"
    odd.mkdir()
    card = json.loads((tiny_model_dir / "model_card.json").read_text())
    card["preprocessing"] = {**card.get("preprocessing", {}), "crop": "nucleus:2"}
    (odd / "model_card.json").write_text(json.dumps(card))
    (odd / "model.tflite").write_bytes((tiny_model_dir / "model.tflite").read_bytes())
    with pytest.raises(ModelLoadError, match="unknown crop 'nucleus:2'"):
        Predictor(odd)


@pytest.mark.parametrize("change, message", [
    ({"preprocessing": "x"}, "'str' object has no attribute 'get'"),
    ({"preprocessing": {"crop": 5}}, "The model card "),
    ([], "is unreadable (not a JSON object but list)"),
])
def test_a_card_edited_into_another_shape_is_refused_at_load_naming_it(
        tiny_model_dir, tmp_path, change, message):
    odd = tmp_path / "odd"
    odd.mkdir()
    card = json.loads((tiny_model_dir / "model_card.json").read_text())
    (odd / "model_card.json").write_text(json.dumps({**card, **change} if change else change))
    (odd / "model.tflite").write_bytes((tiny_model_dir / "model.tflite").read_bytes())
    with pytest.raises(ModelLoadError, match=re.escape(message)) as refused:
        Predictor(odd)
    assert str(odd / "model_card.json") in str(refused.value)


def test_a_model_that_crops_to_the_nucleus_accepts_no_image_without_a_white_cell(
        tiny_model_dir, tmp_path):
    """The tiny model has no trust layer, so it accepts every image in which it finds a white
    cell, and none in which it finds none, on each of the predictor's paths."""
    card = json.loads((tiny_model_dir / "model_card.json").read_text())
    root = make_models_root(tmp_path / "models", tiny_model_dir, names=("cropping",),
                            card={"preprocessing": {**card["preprocessing"], "crop": "nucleus"}})
    predictor = Predictor(root / "cropping")
    smear = make_smear(30, seed=1)
    images = [with_nuclei(smear, [(160, 120, 22)]), smear]
    assert [p.status for p in predictor.predict_images(images)] == ["accepted", "unidentified"]
    arrays = [to_input(image, predictor.input_size, predictor.crop) for image in images]
    assert [p.status for p in predictor.predict_images_arrays(arrays)] == ["accepted"] * 2
    assert [p.status if p else None for p in predictor.predict_each(
        [arrays[0], None, arrays[1]], [1, None, 0])] == ["accepted", None, "unidentified"]
    [(explained, _)] = predictor.explain_arrays(arrays[1:], white_cells=[0])
    assert explained.status == "unidentified"
    with pytest.raises(ValueError, match="Got 1 white-cell counts for 2 images"):
        predictor.predict_images_arrays(arrays, [0])
    # A model that reads images whole counts no white cells and accepts both.
    assert [p.status for p in Predictor(tiny_model_dir).predict_images(images)] == [
        "accepted"] * 2


def test_card_class_count_must_match_the_model(tiny_model_dir, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    card = json.loads((tiny_model_dir / "model_card.json").read_text())
    card["classes"] = card["classes"][:3]
    (wrong / "model_card.json").write_text(json.dumps(card))
    (wrong / "model.tflite").write_bytes((tiny_model_dir / "model.tflite").read_bytes())
    with pytest.raises(ModelLoadError, match=r"expected logits \(n, 3\)"):
        Predictor(wrong)


def test_available_models_lists_complete_folders_only(tiny_model_dir, tmp_path):
    """A model folder holds a card and a serving file; a half-copied one is not offered (the
    app would fail to start on it)."""
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "complete")
    for name, keep in (("card_only", "model_card.json"), ("serving_only", "model.tflite")):
        (tmp_path / name).mkdir()
        shutil.copy2(tiny_model_dir / keep, tmp_path / name / keep)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a folder")
    assert available_models(tmp_path) == ["complete"]
    assert available_models(tmp_path / "missing") == []


def test_a_predictor_puts_numpy_blas_on_one_thread(tiny_model_dir):
    """OpenBLAS threads left spinning after a threaded product slow the next LiteRT call."""
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        Predictor(tiny_model_dir)
        threads = {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}
    assert threads == {1}


def test_explain_draws_the_map_of_the_asked_class_and_keeps_the_prediction(trusted_model_dir):
    from hematovision.trust import class_activation_map

    predictor = Predictor(trusted_model_dir)
    array = np.random.default_rng(2).uniform(-1, 1, (224, 224, 3)).astype(np.float32)
    outputs = predictor.forward(array[None], feature_maps=True)
    kernel = predictor.trust.head_kernel
    predicted, top_map = predictor.explain(array)
    np.testing.assert_array_equal(
        top_map, class_activation_map(outputs.feature_maps[0], kernel,
                                      CLASSES.index(predicted.label)))
    other = next(c for c in CLASSES if c != predicted.label)
    prediction, other_map = predictor.explain(array, label=other)
    assert prediction == predicted  # the class asked for changes the map only
    np.testing.assert_array_equal(
        other_map, class_activation_map(outputs.feature_maps[0], kernel, CLASSES.index(other)))
    with pytest.raises(ValueError, match="basophil"):
        predictor.explain(array, label="basophil")


def test_an_image_finer_than_the_training_images_is_read_at_their_resolution(tiny_model_dir,
                                                                             tmp_path):
    """With the training images' short side in the card (48 here), an image of twice the
    pixels is read as that image brought down to 48 (`preprocess.at_resolution`), by every
    path that reads files or images; without it, as it is."""
    import io

    from hematovision.batch import classify_files
    from hematovision.preprocess import at_resolution

    reference = {"red_cell_scale": 0.1, "single_image_range": [0.5, 2.0],
                 "batch_range": [0.8, 1.25], "max_short_side": 48}
    root = make_models_root(tmp_path / "m", tiny_model_dir, names=("fine",),
                            card={"magnification": reference})
    fine, plain = Predictor(root / "fine"), Predictor(tiny_model_dir)
    assert (fine.short_side, plain.short_side) == (48, None)
    field = make_smear(12, size=(128, 96), seed=3)
    coarse = at_resolution(field, 48)
    assert coarse.size == (64, 48)

    def png(image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()

    (tmp_path / "field.png").write_bytes(png(field))
    expected = fine.predict(png(coarse)).probabilities
    assert fine.predict(png(field)).probabilities == expected
    [result] = classify_files(fine, [tmp_path / "field.png"])
    assert result.prediction.probabilities == expected
    # The step matters: read as it is, the finer image gives another answer.
    assert plain.predict(png(field)).probabilities != plain.predict(png(coarse)).probabilities
