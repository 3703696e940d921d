from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from idmrag_plugin import ImageTooLargeError, InvalidImageError
from idmrag_plugin.image_io import encode, load_rgb

CAP = 40_000_000


def _bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb_uint8(astronaut, mode):
    source = Image.fromarray(astronaut)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(source.convert("L"), np.uint16) * 257)
        assert image.mode.startswith("I;16")
    elif mode == "P":
        image = source.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        image = source.convert(mode)
    pixels = load_rgb(image, CAP)
    assert pixels.shape == (512, 512, 3) and pixels.dtype == np.uint8
    if mode in ("L", "I;16", "I", "F"):
        gray = np.asarray(source.convert("L"), np.int16)
        assert np.abs(pixels[..., 0].astype(np.int16) - gray).max() <= 1


def test_sixteen_bit_png_bytes(astronaut):
    deep = (np.asarray(Image.fromarray(astronaut).convert("L"), np.uint16) * 257).astype(np.uint16)
    data = _bytes(Image.fromarray(deep), "PNG")
    pixels = load_rgb(data, CAP)
    assert pixels.dtype == np.uint8 and abs(int(pixels[..., 0].mean()) - int(deep.mean() / 257)) <= 1


def test_transparent_pixels_are_flattened_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 0
    pixels = load_rgb(rgba, CAP)
    assert (pixels == 255).all()


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 1), np.uint8),
        np.ones((8, 8, 3), np.float32) * 0.5,
        np.full((8, 8, 3), 65535, np.uint16),
        np.ones((8, 8), bool),
        np.zeros((8, 8, 4), np.uint8),
    ],
)
def test_numpy_inputs(array):
    pixels = load_rgb(array, CAP)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"not an image at all",
        np.zeros((8, 8, 5), np.uint8),
        np.zeros(8, np.uint8),
        np.full((4, 4, 3), np.nan, np.float32),
        12345,
        "/nonexistent/photo.jpg",
    ],
)
def test_bad_inputs_raise_typed_errors(bad):
    with pytest.raises(InvalidImageError):
        load_rgb(bad, CAP)


def test_truncated_jpeg_raises_typed_error(astronaut):
    data = _bytes(Image.fromarray(astronaut), "JPEG")
    with pytest.raises(InvalidImageError):
        load_rgb(data[: len(data) // 2], CAP)


def test_pixel_cap_is_checked_from_the_header(astronaut):
    data = _bytes(Image.fromarray(astronaut), "PNG")
    with pytest.raises(ImageTooLargeError, match="max_pixels"):
        load_rgb(data, 512 * 512 - 1)
    with pytest.raises(ImageTooLargeError):
        load_rgb(astronaut, 1000)
    assert load_rgb(data, 512 * 512).shape == (512, 512, 3)


def test_tiny_image():
    assert load_rgb(Image.new("RGB", (1, 1), (10, 20, 30)), CAP).tolist() == [[[10, 20, 30]]]


def test_exif_orientation_is_applied():
    wide = np.zeros((10, 20, 3), np.uint8)
    wide[:, :10] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    data = _bytes(Image.fromarray(wide), "JPEG", exif=exif.tobytes(), quality=95)
    pixels = load_rgb(data, CAP)
    assert pixels.shape == (20, 10, 3)
    assert pixels[:10].mean() > 200 and pixels[10:].mean() < 50  # white half now on top


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_encode_writes_no_metadata(astronaut, fmt):
    data = encode(astronaut, fmt)
    image = Image.open(io.BytesIO(data))
    assert not image.getexif()
    assert not {"exif", "xmp", "XML:com.adobe.xmp", "icc_profile", "photoshop"} & set(image.info)
    assert b"Exif" not in data and b"http://ns.adobe.com/xap" not in data


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_only_the_first_frame_of_an_animation_or_multi_page_file_is_read_and_the_drop_is_logged(
        astronaut, fmt, caplog):
    """A face only on the second frame never reaches the output (it is dropped), and the log says so."""
    first = Image.new("RGB", (astronaut.shape[1], astronaut.shape[0]), (200, 30, 30))
    data = _bytes(first, fmt, save_all=True, append_images=[Image.fromarray(astronaut)])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    with caplog.at_level("WARNING", logger="idmrag_plugin.image_io"):
        pixels = load_rgb(data, CAP)
    assert "only the first is anonymized" in caplog.text and "the other 1 are dropped" in caplog.text
    assert pixels.shape == astronaut.shape and np.abs(pixels.astype(int) - (200, 30, 30)).max() <= 8
    caplog.clear()
    with caplog.at_level("WARNING", logger="idmrag_plugin.image_io"):
        load_rgb(_bytes(first, fmt), CAP)
    assert "frames" not in caplog.text  # a still image: nothing to say
