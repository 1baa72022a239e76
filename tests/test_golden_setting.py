"""The golden-parity tests skip in a clone without the reference outputs and fail under CI."""

import pytest

from tests import conftest


def test_missing_golden_dir_skips_with_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "GOLDEN_DIR", tmp_path / "absent")
    monkeypatch.delenv("KVID_REQUIRE_GOLDEN", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"golden data not found at .*absent"):
        conftest.require_golden_dir()


def test_missing_golden_dir_fails_when_required(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "GOLDEN_DIR", tmp_path / "absent")
    monkeypatch.setenv("KVID_REQUIRE_GOLDEN", "1")
    with pytest.raises(pytest.fail.Exception, match="KVID_REQUIRE_GOLDEN=1"):
        conftest.require_golden_dir()


def test_present_golden_dir_is_returned(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "GOLDEN_DIR", tmp_path)
    monkeypatch.setenv("KVID_REQUIRE_GOLDEN", "1")
    assert conftest.require_golden_dir() == tmp_path
