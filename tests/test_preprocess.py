import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hematovision.exposure import FLATTENED, background
from hematovision.preprocess import ImageError, load_image, preprocess, to_input
from tests.conftest import make_smear, with_transparent_margins
from tests.web_helpers import damaged_images


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_output_contract_shape_dtype_and_range():
    image = Image.new("RGB", (320, 240), (255, 0, 0))
    x = preprocess(encode(image, "PNG"))
    assert x.shape == (224, 224, 3)
    assert x.dtype == np.float32
    # pure red maps to +1 in R and -1 in G, B (x / 127.5 - 1)
    np.testing.assert_allclose(x[112, 112], [1.0, -1.0, -1.0], atol=1e-6)


@pytest.mark.parametrize(
    "mode,value",
    [("L", 128), ("1", 1), ("P", 3), ("CMYK", (0, 255, 255, 0)), ("RGBA", (0, 0, 255, 255)),
     ("LA", (50, 255)), ("I;16", 4000), ("I", 70000), ("F", 0.5), ("YCbCr", (128, 128, 128))],
)
def test_any_mode_becomes_rgb(mode, value):
    image = Image.new(mode, (30, 20), value)
    fmt = "TIFF" if mode in ("I;16", "I", "F", "CMYK", "YCbCr") else "PNG"
    loaded = load_image(encode(image, fmt))
    assert loaded.mode == "RGB"
    assert loaded.size == (30, 20)


def test_cmyk_is_converted_to_the_right_colour():
    cmyk_cyan = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    r, g, b = load_image(encode(cmyk_cyan, "JPEG")).getpixel((4, 4))
    assert r < 40 and g > 200 and b > 200


def test_transparent_pixels_are_flattened_on_white():
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert load_image(encode(image, "PNG")).getpixel((0, 0)) == (255, 255, 255)


FILM = make_smear(30)  # background about (226, 216, 220)
WHITE = (255, 255, 255)


def as_palette(rgba: Image.Image) -> Image.Image:
    """`rgba`'s colours in a palette of 255, its fully transparent pixels the 256th entry,
    marked transparent (a GIF-style PNG)."""
    quantized = rgba.convert("RGB").quantize(255)
    indices = np.asarray(quantized, np.uint8).copy()
    indices[np.asarray(rgba)[..., 3] == 0] = 255
    image = Image.fromarray(indices, "P")
    image.putpalette(quantized.getpalette()[:765] + [0, 0, 0])
    image.info["transparency"] = 255
    return image


def rotated(image: Image.Image, degrees: float = 20) -> Image.Image:
    """`image` turned on a canvas that holds it whole, the corners transparent (RGBA): a
    rotated crop as image tools export it."""
    return image.convert("RGBA").rotate(degrees, Image.Resampling.BILINEAR, expand=True)


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA"])
def test_wholly_transparent_margins_are_cropped_off(mode):
    """A field pasted on a larger transparent canvas: read as the field alone (kept, the
    canvas had halved its red cells' measured size and hidden its white cell)."""
    cut_out = with_transparent_margins(FILM)
    opaque = FILM.convert("L").convert("RGB") if mode == "LA" else FILM
    if mode == "P":
        cut_out = as_palette(cut_out)  # its colours quantized: within a few levels
    elif mode == "LA":
        cut_out = cut_out.convert("LA")
    loaded = load_image(encode(cut_out, "PNG", **(
        {"transparency": 255} if mode == "P" else {})))
    assert loaded.size == FILM.size and FLATTENED not in loaded.info  # nothing left to flatten
    np.testing.assert_allclose(np.asarray(loaded, np.float32), np.asarray(opaque, np.float32),
                               atol=0 if mode != "P" else 12)


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA"])
def test_transparency_inside_the_picture_takes_the_opaque_part_s_background_colour(mode):
    """A rotated crop's corners: the slide's colour, not white (which the exposure check
    measured as an over-exposed background), and the image marked as flattened."""
    turned = rotated(FILM)
    opaque = FILM if mode == "RGBA" else FILM.convert("L").convert("RGB")
    if mode == "P":
        turned, opaque = as_palette(turned), None
    elif mode == "LA":
        turned = turned.convert("LA")
    loaded = load_image(encode(turned, "PNG", **(
        {"transparency": 255} if mode == "P" else {})))
    assert loaded.size == turned.size and loaded.info.get(FLATTENED) is True  # not cropped
    pixels = np.asarray(loaded, np.float32)
    estimate = background(FILM if opaque is None else opaque)
    for corner in [(0, 0), (-1, -1), (0, -1), (-1, 0)]:
        assert tuple(pixels[corner]) == pytest.approx(estimate, abs=4)
        assert tuple(pixels[corner]) != WHITE


def test_a_cell_cut_out_on_its_own_frame_keeps_its_frame():
    """Its slide made transparent round it (a background-removal tool's export): cropped to the
    cell, it would fill the frame, read as if enlarged three times."""
    yy, xx = np.mgrid[:360, :360]
    alpha = np.where(np.hypot(xx - 180, yy - 180) <= 60, 255, 0).astype(np.uint8)
    cut_out = Image.fromarray(np.dstack([np.asarray(FILM.resize((360, 360))), alpha]))
    loaded = load_image(encode(cut_out, "PNG"))
    assert loaded.size == (360, 360) and loaded.info.get(FLATTENED) is True


def test_a_fully_opaque_rgba_image_gives_the_same_pixels_as_its_rgb():
    rgba = FILM.convert("RGBA")
    assert rgba.getchannel("A").getextrema() == (255, 255)
    loaded = load_image(encode(rgba, "PNG"))
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(load_image(encode(FILM, "PNG"))))
    assert FLATTENED not in loaded.info


def test_an_image_nearly_all_transparent_is_flattened_on_white():
    """Two 10x10 opaque patches at opposite corners of 640x480 (0.07 %): too little to tell
    the slide's colour."""
    rgba = Image.new("RGBA", (640, 480), (0, 0, 0, 0))
    patch = FILM.crop((0, 0, 10, 10)).convert("RGBA")
    rgba.paste(patch, (0, 0))
    rgba.paste(patch, (630, 470))
    loaded = load_image(encode(rgba, "PNG"))
    assert loaded.size == (640, 480)
    assert loaded.getpixel((320, 240)) == WHITE and loaded.getpixel((5, 5)) == FILM.getpixel((5, 5))


def test_a_half_transparent_pixel_is_composited_over_the_slide_s_colour():
    rgba = rotated(FILM)
    rgba.putpixel((5, 5), (0, 0, 0, 128))  # half-transparent black, in a corner
    rgba.putpixel((6, 5), (255, 0, 0, 64))  # a quarter-opaque red
    loaded = load_image(encode(rgba, "PNG"))
    colour = loaded.getpixel((0, 0))
    assert colour != WHITE and colour == pytest.approx(background(FILM), abs=4)
    assert loaded.getpixel((5, 5)) == pytest.approx(
        [v * (1 - 128 / 255) for v in colour], abs=1)
    assert loaded.getpixel((6, 5)) == pytest.approx(
        [s * 64 / 255 + v * (1 - 64 / 255) for s, v in zip((255, 0, 0), colour)], abs=1)


def test_sixteen_bit_greyscale_is_stretched_not_clipped():
    array = np.linspace(0, 4095, 64, dtype=np.uint16).reshape(8, 8)
    loaded = load_image(encode(Image.fromarray(array), "PNG"))
    values = np.asarray(loaded)[..., 0]
    assert values.min() == 0 and values.max() == 255


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert loaded.size == (20, 40)
    assert loaded.getpixel((10, 5))[0] > 200  # the white half is now on top
    assert loaded.getpixel((10, 35))[0] < 50


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("P", (10, 10), i) for i in (1, 2, 3)]
    frames[0].putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert load_image(buffer.getvalue()).getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"", "empty"),
        (b"hello, this is text", "not an image"),
        (encode(Image.new("RGB", (64, 64), "red"), "PNG")[:60], "damaged or truncated"),
        (encode(Image.new("RGB", (64, 64), "red"), "JPEG")[:200], "damaged or truncated"),
        # A DDS header of no pixel format Pillow decodes: its NotImplementedError is a file
        # we cannot read, not something unexpected to log with a traceback.
        (b"DDS " + (124).to_bytes(4, "little") + bytes(184), "a variant of its format"),
    ],
)
def test_bad_inputs_raise_image_error_with_a_clear_message(payload, message, caplog):
    with pytest.raises(ImageError, match=message):
        load_image(payload)
    assert "unexpected" not in caplog.text


def test_a_file_cut_short_is_said_so_in_words_not_the_decoder_s():
    """Pillow's "image file is truncated (3 bytes not processed)" read as if three bytes were
    missing from a file two thirds gone."""
    rng = np.random.default_rng(0)
    whole = encode(Image.fromarray(rng.integers(0, 255, (300, 300, 3), np.uint8)), "JPEG")
    # Cut far in, or just past its header (Pillow says "Truncated File Read" there).
    for length in (len(whole) // 3, 300):
        with pytest.raises(ImageError) as cut:
            load_image(whole[:length])
        assert str(cut.value) == (
            "The image is damaged or truncated: the file ends before the image does (a copy or "
            "download that did not finish?). Send the original file again."), length


def test_damaged_files_of_many_formats_give_the_input_or_an_image_error():
    """Seeded damage to files of a dozen formats: each gives the model's input or ImageError,
    the one error the app, the predict command and evaluation turn into a message; any other
    exception would be a 500 or a crashed batch."""
    decoded = refused = 0
    for name, data in damaged_images(400):
        try:
            x = preprocess(data)
        except ImageError as error:
            assert str(error), name
            refused += 1
        else:
            assert x.shape == (224, 224, 3) and x.dtype == np.float32, name
            assert -1 <= x.min() and x.max() <= 1, name
            decoded += 1
    # Both happen, so the damage reaches the decoders and not only the format check.
    assert decoded > 40 and refused > 40, (decoded, refused)


def test_an_empty_file_on_disk_says_so_as_an_empty_upload_does(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="The file is empty"):
        load_image(tmp_path / "empty.jpg")


def test_pixel_limit_refuses_decompression_bombs_before_decoding():
    image = Image.new("L", (3000, 2000))
    with pytest.raises(ImageError, match="too large"):
        load_image(encode(image, "PNG"), max_pixels=1_000_000)


def test_resize_ignores_aspect_ratio_to_fill_the_input():
    image = Image.new("RGB", (320, 240), (0, 0, 0))
    assert to_input(image, 96).shape == (96, 96, 3)


def smear_with_nucleus_at(x: int, y: int, size=(320, 240)) -> Image.Image:
    """Pink background with a violet disc (a stained nucleus) centred at (x, y)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    array = np.zeros((h, w, 3), dtype=np.uint8)
    array[:] = (230, 180, 190)
    array[(xx - x) ** 2 + (yy - y) ** 2 < 20**2] = (90, 60, 180)
    return Image.fromarray(array)


def test_nucleus_crop_centres_on_the_stained_nucleus():
    from hematovision.preprocess import crop_to_nucleus, nucleus_centre

    image = smear_with_nucleus_at(220, 90)
    cx, cy = nucleus_centre(image)
    assert abs(cx - 220) < 2 and abs(cy - 90) < 2
    crop = crop_to_nucleus(image)
    assert crop.size == (132, 132)  # 0.55 x 240
    assert crop.getpixel((66, 66)) == (90, 60, 180)
    assert crop.getpixel((2, 2)) == (230, 180, 190)


def test_nucleus_crop_near_the_border_is_padded_not_shifted():
    from hematovision.preprocess import crop_to_nucleus

    crop = crop_to_nucleus(smear_with_nucleus_at(310, 120))
    assert crop.getpixel((66, 66)) == (90, 60, 180)  # nucleus stays in the centre
    assert crop.getpixel((130, 66)) == (235, 225, 230)  # outside the field: pale fill


def test_nucleus_centre_of_a_long_thin_image_scales_each_axis_on_its_own():
    """thumbnail() rounds the short side, so a tall strip's two axes shrink by different
    factors; one scale for both put the centre far off (and a 40000x1 strip crashed the crop)."""
    from hematovision.preprocess import crop_to_nucleus, nucleus_centre

    cx, cy = nucleus_centre(smear_with_nucleus_at(50, 2825, size=(100, 3000)))
    assert abs(cx - 50) < 10 and abs(cy - 2825) < 10  # one scale gave y = 2741
    strip = Image.new("RGB", (40000, 1), (100, 50, 200))
    assert crop_to_nucleus(strip).size == (1, 1)
    assert preprocess(encode(strip, "PNG"), crop="nucleus").shape == (224, 224, 3)


def test_without_a_nucleus_the_crop_is_central():
    from hematovision.preprocess import nucleus_centre

    blank = Image.new("RGB", (320, 240), (230, 180, 190))
    assert nucleus_centre(blank) is None
    assert preprocess(encode(blank, "PNG"), crop="nucleus").shape == (224, 224, 3)


def test_unknown_crop_is_refused():
    for crop in ("face", "nucleus:", "nucleus:0.1", "nucleus:1.5", "nucleus:half", "nucleus:nan",
                 "none:0.5"):
        with pytest.raises(ValueError, match="unknown crop"):
            to_input(Image.new("RGB", (10, 10)), crop=crop)


def test_crop_fraction_reads_the_crop_names():
    from hematovision.preprocess import NUCLEUS_CROP_FRACTION, crop_fraction

    assert crop_fraction("none") is None
    assert crop_fraction("nucleus") == NUCLEUS_CROP_FRACTION == 0.55
    assert crop_fraction("nucleus:0.4") == 0.4
    assert crop_fraction("nucleus:1") == 1.0


def test_a_nucleus_crop_with_its_own_fraction_is_that_share_of_the_short_side():
    """nucleus:0.4 is the same square round the nucleus as nucleus, 0.4 of the short side
    (96 of 240 pixels) instead of 0.55, so the cell fills more of the model input."""
    from hematovision.preprocess import crop_to_nucleus

    smear = smear_with_nucleus_at(200, 100)
    tight = to_input(smear, 224, "nucleus:0.4")
    np.testing.assert_array_equal(tight, to_input(crop_to_nucleus(smear, 0.4), 224))
    assert crop_to_nucleus(smear, 0.4).size == (96, 96)
    assert not np.array_equal(tight, to_input(smear, 224, "nucleus"))
    np.testing.assert_array_equal(to_input(smear, 224, "nucleus:0.55"),
                                  to_input(smear, 224, "nucleus"))


def test_a_scale_widens_the_nucleus_crop_by_that_factor_and_a_plain_read_ignores_it():
    """Cells shown 1.5 times their training size: the square round the nucleus grows 1.5
    times (0.825 of the short side), so the cell fills the input as in training."""
    from hematovision.preprocess import crop_to_nucleus, nucleus_square

    smear = smear_with_nucleus_at(200, 100)
    assert nucleus_square(smear, 0.55, scale=1.5)[2] == round(240 * 0.825) == 198
    assert crop_to_nucleus(smear, 0.55, scale=1.5).size == (198, 198)
    np.testing.assert_array_equal(to_input(smear, 224, "nucleus", scale=1.5),
                                  to_input(smear, 224, "nucleus:0.825"))
    np.testing.assert_array_equal(to_input(smear, 224, "nucleus", scale=1.0),
                                  to_input(smear, 224, "nucleus"))
    np.testing.assert_array_equal(to_input(smear, 224, "none", scale=1.5), to_input(smear, 224))


def old_stretch(image: Image.Image) -> np.ndarray:
    """The full-image float64 stretch the serving path used before: the reference output."""
    array = np.nan_to_num(np.asarray(image, dtype=np.float64))
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
    return scaled.astype(np.uint8)


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_stretch_gives_the_same_pixels_as_before(mode):
    rng = np.random.default_rng(0)
    values = {"I;16": rng.integers(300, 60_000, (700, 3001)).astype(np.uint16),
              "I": rng.integers(-70_000, 2**31 - 1, (700, 3001)).astype(np.int32),
              "F": rng.normal(0.5, 3.0, (700, 3001)).astype(np.float32)}[mode]
    if mode == "F":
        values[5, 7] = np.nan  # read as 0, as before
    image = Image.fromarray(values)
    assert image.mode == mode
    loaded = load_image(encode(image, "TIFF"))
    np.testing.assert_array_equal(np.asarray(loaded)[..., 0], old_stretch(image))


def test_a_large_sixteen_bit_image_needs_no_full_size_float64_copy():
    """12 megapixels of 16-bit grey: numpy's share of the work stays under 4 bytes per pixel
    (the 8-bit result plus bounded row blocks); full-size float64 arrays would take 8 each."""
    import tracemalloc

    ramp = np.linspace(0, 65535, 4000, dtype=np.uint16)[None, :].repeat(3000, axis=0)
    data = encode(Image.fromarray(ramp), "TIFF")
    tracemalloc.start()
    try:
        loaded = load_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loaded.size == (4000, 3000) and loaded.getpixel((3999, 0)) == (255, 255, 255)
    assert peak < 4 * ramp.size, f"{peak / ramp.size:.1f} bytes per pixel"


# An iPhone-style HEIC (the pixels 64x32, left half red, right half blue, with an `irot` box
# and EXIF orientation 6: shown turned a quarter clockwise, red on top). Made once with
# pillow-heif 1.8.1, whose encoder our decode-only pi-heif lacks:
# `Image.fromarray(a).save(path, "HEIF", quality=90, exif=exif)` with exif[0x0112] = 6.
TURNED_HEIC = Path(__file__).parent / "data" / "turned-by-exif.heic"


def red_on_top_blue_below(image: Image.Image) -> bool:
    a = np.asarray(image, dtype=int)
    return (a[2, 16, 0] - a[2, 16, 2] > 100) and (a[-3, 16, 2] - a[-3, 16, 0] > 100)


def test_a_heic_photo_is_read_upright_and_turned_only_once():
    """libheif applies the `irot` turn itself; turning again by the EXIF tag would lay the
    image on its side."""
    image = load_image(TURNED_HEIC)
    assert image.mode == "RGB" and image.size == (32, 64)
    assert red_on_top_blue_below(image)


def test_an_avif_image_is_read_upright():
    a = np.zeros((32, 64, 3), np.uint8)
    a[:, :32], a[:, 32:] = (220, 30, 30), (30, 30, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    image = load_image(encode(Image.fromarray(a), "AVIF", quality=90, exif=exif.tobytes()))
    assert image.size == (32, 64) and red_on_top_blue_below(image)


def test_damaged_heic_and_avif_files_give_the_input_or_an_image_error(caplog):
    """Their decoders are C libraries of their own (libheif, libavif) and fail with
    RuntimeError, which must read as a damaged file, not an unexpected error."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    sources = [TURNED_HEIC.read_bytes(), encode(noise, "AVIF", quality=60)]
    outcomes = {"decoded": 0, "refused": 0}
    for i in range(300):
        data = bytearray(sources[i % 2])
        at = int(rng.integers(len(data)))
        if i % 3 == 0:
            data = data[:max(1, at)]
        else:
            for j in rng.integers(len(data), size=int(rng.integers(1, 10))):
                data[j] = int(rng.integers(256))
        try:
            assert preprocess(bytes(data)).shape == (224, 224, 3)
            outcomes["decoded"] += 1
        except ImageError as error:
            assert str(error)
            outcomes["refused"] += 1
    assert min(outcomes.values()) > 20, outcomes
    assert "unexpected" not in caplog.text


def test_an_image_finer_than_the_training_images_is_brought_down_to_their_resolution():
    from hematovision.preprocess import at_resolution

    field = Image.new("RGB", (640, 480))
    assert at_resolution(field, 240).size == (320, 240)  # BCCD's smear as Kaggle's field
    assert at_resolution(Image.new("RGB", (480, 960)), 240).size == (240, 480)  # aspect kept
    coarse = Image.new("RGB", (300, 200))
    assert at_resolution(coarse, 240) is coarse  # never enlarged: that adds no detail
    assert at_resolution(field, None) is field  # no reference recorded: read as it is
