"""`tuneforge data` keeps the token lengths it measured under the tokenised cache's key: a second call
with the same data, tokenizer, template and settings reads them instead of tokenising every row again,
and prints the same report."""

from __future__ import annotations

import pytest

from tuneforge.data import doctor
from tuneforge.data.doctor import run_doctor

from .conftest import ANCHOR
from .test_data_pipeline import make_ctx

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture
def measured_rows(monkeypatch):
    """How many rows the doctor tokenised (the real lengths_batch, counted)."""
    counted = {"rows": 0}
    real = doctor.lengths_batch

    def counting(batch, **kwargs):
        counted["rows"] += len(batch["_example"])
        return real(batch, **kwargs)

    monkeypatch.setattr(doctor, "lengths_batch", counting)
    return counted


def test_second_data_call_reads_the_lengths_and_prints_the_same(tiny_model, private_cache, measured_rows, capsys):  # noqa: F811
    def report(**overrides):
        settings = {"dataset": "identity,alpaca_en_demo", "max_samples": 60, "cutoff_len": 96, **overrides}
        ctx = make_ctx(tiny_model, ANCHOR, **settings)
        assert run_doctor(ctx, "supervised") == 0
        return capsys.readouterr().out

    first = report()
    assert measured_rows["rows"] == 60 + 60
    assert "truncated by cutoff_len" in first
    second = report()
    assert measured_rows["rows"] == 120  # nothing tokenised again
    assert second == first
    # other settings are another key: measured afresh, and the report says what they change
    third = report(cutoff_len=512)
    assert measured_rows["rows"] == 240
    assert third != first
    # overwrite_cache: true measures again, with the same result
    assert report(overwrite_cache=True) == first
    assert measured_rows["rows"] == 360
