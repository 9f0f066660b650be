"""The exposure correction: the slide's background measured, an image outside the training
images' backgrounds scaled to their median, channel by channel, and left as it is where that
would be a guess; the card's reference read or left out; the command that records it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from hematovision.exposure import Exposure, background, scaled, slide_background, stored
from hematovision.predictor import served_settings
from hematovision.preprocess import load_image
from tests.conftest import make_smear, with_transparent_margins

FILM = make_smear(30)  # background (226, 216, 220) with a little noise, a third red cells


def reference_of(image: Image.Image, spread: float = 0.04) -> Exposure:
    """A reference whose median is the image's background, its range +-`spread` of it."""
    median = background(image)
    return Exposure(median, tuple(v * (1 - spread) for v in median),
                    tuple(min(255.0, v * (1 + spread)) for v in median))


def test_the_background_is_the_bare_slide_not_the_cells():
    measured = background(FILM)
    assert measured == pytest.approx((226, 216, 220), abs=4)
    # Other cells in another frame leave it where it was: the slide's colour, not the mean's.
    other = make_smear(20, size=(160, 120), seed=3)
    assert background(other) == pytest.approx(measured, abs=4)


@pytest.mark.parametrize("image", [Image.new("RGB", (64, 64)),  # all black fill
                                   Image.new("RGB", (0, 5))])
def test_an_image_with_no_slide_has_no_background(image):
    assert background(image) is None


def test_an_image_within_the_training_backgrounds_is_read_as_it_is():
    reference = reference_of(FILM)
    image, found = reference.correct(FILM)
    assert image is FILM
    assert found["exposure"]["outside"] is False and found["exposure"]["gains"] is None


@pytest.mark.parametrize("factor", [0.6, 0.75, 0.9, 1.08])
def test_another_exposure_is_brought_back_to_the_training_background(factor):
    reference = reference_of(FILM)
    changed = scaled(FILM, (factor,) * 3)
    image, found = reference.correct(changed)
    entry = found["exposure"]
    assert entry["outside"] is True
    assert entry["gains"] == pytest.approx([1 / factor] * 3, rel=0.02)
    assert background(image) == pytest.approx(reference.background, rel=0.02)
    # The cells come back with it: the whole image is within a few levels of the original.
    difference = np.abs(np.asarray(image, float) - np.asarray(FILM, float))
    assert difference.mean() < 2


def test_another_lamp_colour_is_corrected_colour_by_colour():
    reference = reference_of(FILM)
    warmer = scaled(FILM, (1.0, 0.92, 0.8))
    _, found = reference.correct(warmer)
    assert found["exposure"]["gains"] == pytest.approx([1.0, 1 / 0.92, 1 / 0.8], rel=0.02)
    assert stored(found["exposure"]).tinted


def test_a_channel_clipped_in_the_training_images_takes_the_others_gain_within_its_bound():
    """PBC's red background is the camera's white (255): a darker image's red says only that
    it needs at least 255/red, and the green and blue say how much."""
    reference = Exposure((255.0, 228.0, 203.0), (209.0, 199.0, 197.0), (255.0, 233.0, 239.0))
    assert reference.gains((191.0, 171.0, 152.2)) == pytest.approx((1.334, 1.333, 1.334),
                                                                     abs=0.002)
    # A lamp redder than that bound says: at least 255/240, though green and blue want 1.1.
    assert reference.gains((240.0, 207.0, 184.5))[0] == pytest.approx(1.1, abs=0.002)
    assert reference.gains((200.0, 207.0, 184.5))[0] == pytest.approx(1.275, abs=0.002)


def test_a_channel_white_in_both_is_darkened_with_the_others_never_brightened():
    """A warmer lamp leaves PBC's red at white while green and blue dim: red stays as it is."""
    reference = Exposure((255.0, 228.0, 203.0), (209.0, 199.0, 197.0), (255.0, 233.0, 239.0))
    warmer = reference.gains((255.0, 216.6, 172.6))
    assert warmer == pytest.approx((1.0, 228 / 216.6, 203 / 172.6), abs=0.002)
    darker = reference.gains((255.0, 190.0, 170.0))  # red still at white, the rest dimmer
    assert darker[0] == 1.0


@pytest.mark.parametrize("measured", [(255.0, 240.0, 230.0), (230.0, 251.0, 200.0)])
def test_a_channel_at_white_in_the_image_only_is_over_exposed_never_scaled(measured):
    """What lay above white is lost: scaling the rest makes another image. A PBC platelet
    (red at white, where Kaggle's training fields are not) had been read by wbc4, so scaled,
    as a neutrophil and accepted."""
    reference = Exposure((218.0, 219.0, 213.0), (200.0, 200.0, 196.0), (237.0, 239.0, 237.0))
    assert reference.gains(measured) is None
    image = Image.new("RGB", (64, 48), tuple(int(v) for v in measured))
    check = reference.check(image)
    assert check["outside"] and check["gains"] is None and check["over_exposed"] is True
    assert stored(check).clipped(reference) == [
        c for c, v in zip(("red", "green", "blue"), measured) if v >= 250]


def test_an_over_exposed_image_is_read_as_it_is_and_said_to_be():
    reference = reference_of(FILM)
    white = scaled(FILM, (1.3, 1.3, 1.3))  # the background clipped in every colour
    image, found = reference.correct(white)
    assert image is white
    assert found["exposure"]["outside"] and found["exposure"]["gains"] is None
    assert found["exposure"]["over_exposed"] is True


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_transparent_margins_are_not_measured_as_an_over_exposed_background():
    """Flattened onto white, the margins were the brightest tenth: a background at the
    camera's white, over-exposed, for a smear within the training images' range. Margins
    wholly transparent are cropped off, and the field is measured as itself; transparency
    inside the picture (a rotated crop's corners) takes the slide's colour, and the check
    leaves the image unmeasured, read as it is."""
    reference = reference_of(FILM)
    assert reference.check(FILM)["outside"] is False
    pasted = load_image(png(with_transparent_margins(FILM)))
    assert reference.check(pasted) == reference.check(FILM)
    turned = load_image(png(FILM.convert("RGBA").rotate(20, Image.Resampling.BILINEAR,
                                                        expand=True)))
    assert background(turned) == pytest.approx(background(FILM), abs=3)  # the corners' fill
    assert reference.check(turned) is None
    assert reference.correct(turned) == (turned, {"exposure": None})


def test_a_cell_cut_out_of_its_slide_is_not_corrected_on_its_own_cytoplasm():
    """A segmentation tool's cut-out holds no bare slide: its margins took its palest
    cytoplasm's colour, which the check measured as a flat background and 'corrected' green
    by 1.13 for a cell that, on its slide, is within the training images' range."""
    size = 240
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(xx - size / 2, yy - size / 2) / (size / 2)
    t = np.clip(r, 0, 1)[..., None]
    rgb = np.array([150, 120, 190.]) * (1 - t) + np.array([222, 196, 228.]) * t
    rgb[r < 0.45] = (90, 60, 160)
    rgb = np.clip(rgb + rng.normal(0, 8, (size, size, 1)), 0, 255).astype(np.uint8)
    on_slide = rgb.copy()
    on_slide[r > 1] = (218, 219, 214)  # wbc4's median training background
    reference = Exposure((218.0, 219.0, 214.0), (200.0, 200.0, 196.0), (237.0, 239.0, 237.0),
                         0.0569)
    assert reference.check(Image.fromarray(on_slide))["outside"] is False
    cut_out = Image.fromarray(np.dstack([rgb, np.where(r <= 1, 255, 0).astype(np.uint8)]))
    assert slide_background(load_image(png(cut_out)))[1] <= 0.0569  # a plateau to the check
    assert reference.check(load_image(png(cut_out))) is None


def test_a_background_further_than_an_exposure_takes_it_is_not_corrected():
    reference = reference_of(FILM)
    dark = scaled(FILM, (0.3, 0.3, 0.3))  # needs more than MAX_GAIN: not a bright-field slide
    image, found = reference.correct(dark)
    assert image is dark
    assert found["exposure"]["gains"] is None and found["exposure"]["over_exposed"] is False


def cell_filling_the_frame(size: int = 200, radius: float = 120) -> Image.Image:
    """One white cell at the training exposure, cropped so tight that the slide shows only in
    the corners (about 5 % of the frame): pale violet cytoplasm, a violet nucleus."""
    rng = np.random.default_rng(0)
    array = np.full((size, size, 3), (226, 216, 220), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    distance = np.hypot(xx - size / 2, yy - size / 2)
    array[distance < radius] = (200, 170, 200)
    array[distance < size / 4] = (90, 60, 160)
    array += rng.normal(0, 3, array.shape)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def test_a_brightest_tenth_that_is_no_plateau_of_slide_is_not_measured():
    """In a crop the cell fills, the brightest tenth reaches into the cytoplasm: taken for the
    slide, it would recolour an image taken at the training exposure (the reviewer's case)."""
    reference = reference_of(FILM)
    spread = slide_background(FILM)[1]
    guarded = Exposure(reference.background, reference.low, reference.high, 4 * spread)
    tight = cell_filling_the_frame()
    assert slide_background(tight)[1] > 4 * spread
    image, found = guarded.correct(tight)
    assert image is tight and found == {"exposure": None}
    # Without a recorded spread (a card from before it), the tenth is taken as it is.
    assert reference.check(tight)["gains"] is not None
    assert guarded.check(scaled(FILM, (0.75,) * 3))["gains"] is not None


@pytest.mark.parametrize("entry", [
    None, {}, {"background": [1, 2], "low": [0, 0, 0], "high": [9, 9, 9]},
    {"background": "abc", "low": [0, 0, 0], "high": [9, 9, 9]},
    {"background": [5, 5, float("nan")], "low": [0, 0, 0], "high": [9, 9, 9]},
    {"background": [5, 5, 5], "low": [6, 0, 0], "high": [9, 9, 9]},  # median below lowest
    {"background": [0, 0, 0], "low": [0, 0, 0], "high": [9, 9, 9]},
    {"background": [5, 5, 300], "low": [0, 0, 0], "high": [9, 9, 300]},
    {"background": [5, 5, 5], "low": [0, 0, 0], "high": [9, 9, 9], "max_spread": 2},
    {"background": [5, 5, 5], "low": [0, 0, 0], "high": [9, 9, 9], "max_spread": True},
    {"background": [5, 5, 5], "low": [0, 0, 0], "high": [9, 9, 9], "max_spread": "0.1"},
    {"background": [5, 5, 5], "low": [0, 0, 0], "high": [9, 9, 9], "max_spread": 10 ** 400},
])
def test_an_unusable_card_entry_corrects_nothing(entry):
    assert Exposure.from_card({"exposure": entry}) is None


def test_a_stored_check_is_read_back_or_left_out_when_damaged():
    reference = reference_of(FILM)
    _, found = reference.correct(scaled(FILM, (0.75,) * 3))
    check = stored(json.loads(json.dumps(found["exposure"])))
    assert check.corrected and not check.over_exposed
    assert check.brightness() == pytest.approx(0.75, abs=0.02)
    for damaged in ({**found["exposure"], "gains": [1.2]},
                    {**found["exposure"], "gains": ["x", 1, 1]},
                    {**found["exposure"], "gains": [9, 9, 9]},
                    {**found["exposure"], "outside": "yes"},
                    {**found["exposure"], "background": None}, "text", None):
        assert stored(damaged) is None


def test_a_reference_is_a_served_setting_only_where_the_card_has_one():
    """A model's version stays the same across the upgrade that added the correction, and
    changes when its card records a reference."""
    card = {"classes": ["a"], "input_size": [8, 8, 3]}
    assert "exposure" not in served_settings(card)
    entry = {"background": [200, 210, 220], "low": [190, 200, 210], "high": [210, 220, 230]}
    assert served_settings({**card, "exposure": entry})["exposure"] == {**entry,
                                                                       "max_spread": None}
    spread = {**entry, "max_spread": 0.05}
    assert served_settings({**card, "exposure": spread})["exposure"] == spread


def test_the_predictor_reads_an_image_as_trained(trusted_model_dir, tmp_path):
    from hematovision.predictor import Predictor
    from tests.web_helpers import make_models_root

    make_models_root(tmp_path, trusted_model_dir, names=("plain", "exposed"))
    card = json.loads((tmp_path / "exposed" / "model_card.json").read_text())
    reference = reference_of(FILM)
    card["exposure"] = reference.entry()
    (tmp_path / "exposed" / "model_card.json").write_text(json.dumps(card))
    plain, exposed = Predictor(tmp_path / "plain"), Predictor(tmp_path / "exposed")
    assert plain.exposure is None and exposed.exposure == reference
    assert plain.version != exposed.version
    darker = scaled(FILM, (0.7,) * 3)
    assert plain.as_trained(darker) == (darker, {})
    image, found = exposed.as_trained(darker)
    assert found["exposure"]["gains"] == pytest.approx([1 / 0.7] * 3, rel=0.02)
    assert exposed.predict_images([darker])[0].probabilities == pytest.approx(
        exposed.predict_images([image])[0].probabilities)


def test_the_command_records_the_reference_and_the_figures_both_ways(
        tmp_path, trusted_model_dir):
    from training import exposure, tables
    from tests.web_helpers import make_models_root

    split = {"root": str(tmp_path / "train"), "train": []}
    classes = json.loads((trusted_model_dir / "model_card.json").read_text())["classes"]
    for i in range(8):
        for root in (tmp_path / "train", tmp_path / "test"):
            path = root / classes[i % len(classes)] / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            scaled(make_smear(30, seed=i), (1 + (i % 3 - 1) * 0.03,) * 3).save(path)
        split["train"].append(f"{classes[i % len(classes)]}/{i}.png")
    root = tmp_path / "models"
    make_models_root(root, trusted_model_dir, names=("model",))
    (root / "model" / "splits.json").write_text(json.dumps(split))
    exposure.main(["--model-dir", str(root / "model"), "--data", str(tmp_path / "test"),
                   "--workers", "1", "--record"])

    entry = json.loads((root / "model" / "model_card.json").read_text())["exposure"]
    assert entry["reference"]["images"] == 8 and entry["measured"] == 8
    low, high = np.array(entry["low"]), np.array(entry["high"])
    assert (low < np.array(entry["background"])).all() and (high > low).all()
    rows = {r["name"]: r for r in entry["check"]["rows"]}
    assert list(rows) == list(exposure.CHANGES)
    # The training images' own exposures are within: nothing corrected, both ways alike.
    assert rows["as recorded"]["corrected"] == 0
    assert rows["as recorded"]["as_read"] == {k: rows["as recorded"][k] for k in
                                              rows["as recorded"]["as_read"]}
    # Every darker image corrected, bar any whose brightest tenth, its levels rounded anew,
    # is a little more spread than the widest of these 8 training images'.
    darker = rows["darker"]
    assert darker["corrected"] >= 0.75 and darker["corrected"] + darker["unmeasured"] == 1
    assert rows["brighter"]["not_correctable"] == 1
    assert 0 < entry["max_spread"] < 0.05
    assert Exposure.from_card({"exposure": entry}) is not None

    table = tables.exposure_table(root).splitlines()
    assert table[0].startswith("| | `model` (n=8)")
    assert any(line.startswith(f"| darker: under-exposed: brightness x0.75 | "
                               f"{darker['corrected']:.1%} |") for line in table)
    assert table[5].startswith(f"| training images' widest spread of a brightest tenth (wider: "
                               f"not measured) | {entry['max_spread']:g} |")
