import io
import struct
import zlib

import cv2
import numpy as np

from tasks.decode import decode_scan


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: a decompression bomb must be refused from the header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + struct.pack(">I", len(idat) - 4) + idat
            + struct.pack(">I", zlib.crc32(idat)))


def encode(img, ext=".png") -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def test_zero_bytes():
    d = decode_scan(b"")
    assert not d.ok and d.reason == "empty file (0 bytes)"


def test_not_an_image():
    d = decode_scan(b"%PDF-1.4 definitely not a raster image" * 10)
    assert not d.ok and "not an image" in d.reason


def test_decompression_bomb_is_refused_before_decoding():
    d = decode_scan(png_header_only(100_000, 100_000))
    assert not d.ok and "too large: 100000x100000" in d.reason


def test_truncated_jpeg_never_raises():
    data = encode(np.full((400, 300), 200, np.uint8), ".jpg")
    d = decode_scan(data[: len(data) // 3])
    assert d.ok or d.reason  # either a partial picture or a reason, never an exception


def test_sixteen_bit_and_colour_scans_become_grey_uint8():
    d16 = decode_scan(encode(np.full((200, 150), 40000, np.uint16)))
    assert d16.ok and d16.gray.dtype == np.uint8 and d16.gray.shape == (200, 150)
    colour = np.zeros((200, 150, 3), np.uint8)
    colour[..., 2] = 255
    dc = decode_scan(encode(colour))
    assert dc.ok and dc.gray.ndim == 2


def test_tiny_image_is_not_a_scan():
    d = decode_scan(encode(np.zeros((20, 20), np.uint8)))
    assert not d.ok and "too small" in d.reason


def test_exif_orientation_is_applied():
    from PIL import Image

    img = Image.fromarray(np.zeros((120, 300), np.uint8))  # landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    d = decode_scan(buf.getvalue())
    assert d.ok and d.gray.shape == (300, 120)


def test_ink_kept_as_opacity_is_laid_on_white_paper():
    """A PNG with black pixels whose alpha carries the ink (a transparent background) was a
    black page to a greyscale decode, refused as "blank page: no ink found"."""
    from PIL import Image

    page = np.full((300, 200), 255, np.uint8)
    page[100:140, 50:150] = 30  # a stroke
    page[200:210, 20:180] = 128  # a grey rule
    opacity = 255 - page
    for mode, pixels in (("RGBA", np.dstack([np.zeros((300, 200, 3), np.uint8), opacity])),
                         ("LA", np.dstack([np.zeros((300, 200), np.uint8), opacity]))):
        buf = io.BytesIO()
        Image.fromarray(pixels, mode).save(buf, format="PNG")
        d = decode_scan(buf.getvalue())
        assert d.ok and d.gray.dtype == np.uint8, mode
        assert np.abs(d.gray.astype(int) - page).max() <= 1, mode
    opaque = np.dstack([np.repeat(page[..., None], 3, axis=2), np.full((300, 200), 255, np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(opaque, "RGBA").save(buf, format="PNG")
    assert np.abs(decode_scan(buf.getvalue()).gray.astype(int) - page).max() <= 1  # alpha 255: as is
