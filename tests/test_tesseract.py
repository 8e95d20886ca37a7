"""The Tesseract baseline of `cifras bench`: parsing, and one real call where it is installed."""

import cv2
import numpy as np
import pytest

from tasks import tesseract


def test_parse_number_and_accuracy():
    assert tesseract.parse_number(" 1 23\n") == 123
    assert tesseract.parse_number("\n") is None
    # nothing read counts as 0, as a blank cell means none on the form
    assert tesseract.number_accuracy([123, None, 7], [123, 0, 1]) == pytest.approx(2 / 3)


def test_reads_printed_digits_in_cells():
    if tesseract.tesseract_binary() is None:
        pytest.skip("tesseract not installed (apt-get install tesseract-ocr)")
    cells = []
    for text in ("305", "42", "7"):
        img = np.full((60, 200), 255, np.uint8)
        cv2.putText(img, text, (20, 45), cv2.FONT_HERSHEY_SIMPLEX, 1.4, 0, 3)
        cells.append(img)
    assert tesseract.read_cells(cells, processes=2) == [305, 42, 7]
