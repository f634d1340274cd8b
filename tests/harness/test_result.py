"""The result schema: versions and migrations, the digest of what was written, file permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest

from harness.result import SCHEMA, Result, ResultError, base_result, load_result, migrate, read_result, write_result
from harness.spec import Spec


def _spec() -> Spec:
    return Spec(task="scaling", adapter="native", batch_size=4, steps=2, lr=0.1)


def version_one() -> dict:
    """A result exactly as bakeoff.result/1 wrote it (no declared parity)."""
    data = base_result(_spec(), status="ok")
    data["schema"] = "bakeoff.result/1"
    del data["declared_parity"]
    data["trajectory"] = {"losses": [1.0, 0.5], "step_end_ns": [10, 20]}
    data["timing"] = {"launch_wall_ns": 1_700_000_000_000_000_000}
    return data


def test_a_version_one_result_migrates_and_keeps_the_digest_it_was_logged_under():
    from harness.result import content_digest

    old = version_one()
    result = Result.from_dict(old)
    assert result.declared_parity is None and result.to_dict()["schema"] == SCHEMA
    assert result.digest == content_digest(old)  # the store knows it by what was written
    assert result.extra["timing"] == old["timing"]  # sections the schema does not name travel along
    assert migrate(old)["declared_parity"] is None and old["schema"] == "bakeoff.result/1"  # input untouched
    again = Result.from_dict(result.to_dict())
    assert again.to_dict() == result.to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema": "bakeoff.result/99"}, "newer than this bakeoff reads"),
        ({"schema": "something/1"}, "not a bakeoff result schema"),
        ({"schema": "bakeoff.result/x"}, "has no version number"),
        ({"status": "exploded"}, "unknown status"),
        ({"spec_id": "0" * 16}, "does not match its spec"),
        ({"trajectory": {"losses": [1.0], "step_end_ns": []}}, "differ in length"),
    ],
)
def test_an_invalid_result_names_its_problem(change, message):
    with pytest.raises(ResultError, match=message):
        Result.from_dict({**version_one(), **change})


def test_result_files_honour_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        write_result(tmp_path / "shared.json", base_result(_spec(), status="ok"))
        os.umask(0o077)
        write_result(tmp_path / "private.json", base_result(_spec(), status="ok"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o644  # others can ingest it
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


def test_reading_a_file_gives_the_current_version(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(version_one()))
    assert read_result(path)["schema"] == SCHEMA
    assert load_result(path).spec == _spec()
    path.write_text("{ truncated")
    with pytest.raises(ResultError, match="not a readable result file"):
        load_result(path)
