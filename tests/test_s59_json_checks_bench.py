"""bench/json_checks.py: what the coordinator's JSON strictness checks (the repeated-key 422,
the unpaired-surrogate search) cost a check-in, beside the parse FastAPI makes anyway and a
whole signed check-in over loopback, measured in one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_s49_bench_provenance import _script


def test_a_quick_run_times_the_checks_on_the_body_the_sdk_sends(tmp_path: Path) -> None:
    # Prepare
    module = _script("json_checks")
    out = tmp_path / "jc.json"

    # Execute
    assert module.main(["--quick", "--repeats", "1", "--check-ins", "2", "--out", str(out)]) == 0

    # Assert: every figure measured (positive), the ratios computed from them, the run's
    # provenance and machine recorded, marked quick
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and doc["command"].startswith("python bench/json_checks.py")
    assert "git_commit" in doc and doc["machine"] and doc["date"]
    for key in ("parse_us", "checks_us", "check_in_ms", "check_in_body_bytes"):
        assert doc[key] > 0, key
    assert doc["checks_over_parse"] == pytest.approx(doc["checks_us"] / doc["parse_us"], rel=0.02)
    share = doc["checks_us"] / (doc["check_in_ms"] * 1000) * 100
    assert doc["checks_share_of_check_in_pct"] == pytest.approx(share, rel=0.02)


def test_the_checks_timed_are_the_ones_that_refuse_a_repeated_key() -> None:
    # The timed function is the route's: it refuses what the route refuses (422)
    module = _script("json_checks")
    module._checks(b'{"task_id": 1}')
    with pytest.raises(Exception, match="given 2 times"):
        module._checks(b'{"task_id": 1, "task_id": 2}')


def test_bad_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    module = _script("json_checks")
    with pytest.raises(SystemExit):
        module.main(["--quick", "--repeats", "0"])
    assert "--repeats and --check-ins must be at least 1" in capsys.readouterr().err
