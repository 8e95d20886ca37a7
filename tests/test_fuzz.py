"""A short, bounded run of the fuzzing harness (tests/fuzz.py): mutated JPEG, PNG, TIFF and
PDF files through the decoder and through the full read of one scan. Every input must end as
a status with a reason; Hypothesis re-raises (shrunk) any input that does not."""

from __future__ import annotations

import pytest

from tests.conftest import shared_data_dir
from tests.fuzz import fuzz, seed_corpus


@pytest.fixture(scope="module")
def corpus() -> list[bytes]:
    shared = shared_data_dir()
    scan = shared / "telegram_reference" / "santa_fe_2021_mesa_0001.jpg" if shared else None
    return seed_corpus(scan)


def test_fuzz_decoder_bounded(corpus):
    result = fuzz("decode", 0, corpus, hang_s=60, batch=150)
    assert result["inputs"] >= 150 and result["crashes"] == 0
    assert result["outcomes"].get("decoded", 0) > 0  # mutations that keep an image still decode
    assert sum(result["outcomes"].values()) == result["pages"]


@pytest.mark.slow
def test_fuzz_full_read_bounded(corpus):
    result = fuzz("read", 0, corpus, hang_s=60, batch=25)
    assert result["inputs"] >= 25 and sum(result["outcomes"].values()) == result["pages"]
    assert all(k.split(":")[0] in ("read ok", "unreadable", "unaligned") for k in result["outcomes"])
