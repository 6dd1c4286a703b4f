"""serve's checks that relate two values name the --config file's key for a value from the file
(s50 ops review, finding 4).

Before, `poll = 61` in the file (and no flags) was refused with the flags' line,
`--pool-ttl 60 must be more than --poll (61 s)`, naming neither the file nor the key: the check
named the file only when `pool-ttl` came from it. So was a `tls-cert` (or `tls-key`) in the file
without the other: `--tls-cert and --tls-key go together`. docs/operations.md says the checks
that relate values name the key when the value came from the file. Now each names the file's
key of the value at fault, and the other value where it came from; values from flags keep the
flags' line.

serve is replaced by a recorder (`served`): nothing is served or opened.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service import ServiceConfig

from .test_h113_serve_config import (  # noqa: F401 (served: fixture)
    _config,
    _config_refused,
    _serve,
    served,
)

FILE_CASES = {
    "poll in the file, pool-ttl's default": (
        "poll = 61",
        [],
        "poll = 61: must be less than --pool-ttl (60 s, its default): waiting devices",
    ),
    "poll in the file, --pool-ttl": (
        "poll = 61",
        ["--pool-ttl", "30"],
        "poll = 61: must be less than --pool-ttl (30 s): waiting devices",
    ),
    "both in the file": (
        "pool-ttl = 5\npoll = 6",
        [],
        "pool-ttl = 5: must be more than the poll interval (6 s) set by poll = 6 in the same "
        "file: waiting devices",
    ),
    "pool-ttl in the file, --poll": (
        "pool-ttl = 5",
        ["--poll", "6"],
        "pool-ttl = 5: must be more than the poll interval (6 s) set by --poll 6: waiting",
    ),
    "tls-cert in the file alone": (
        "tls-cert = 'cert.pem'",
        [],
        "tls-cert = 'cert.pem': needs tls-key too (in the file, or --tls-key): the certificate "
        "and its private key go together",
    ),
    "tls-key in the file alone": (
        "tls-key = 'key.pem'",
        [],
        "tls-key = 'key.pem': needs tls-cert too (in the file, or --tls-cert)",
    ),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_a_relation_broken_by_a_value_from_the_file_names_its_key(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    # Prepare
    text, flags, words = FILE_CASES[case]
    conf = _config(tmp_path, f'db = "{tmp_path / "x.db"}"\n{text}\n')
    # Execute
    line = _config_refused(capsys, served, conf, *flags)
    # Assert: one line naming the file and the key (before: the flags' line, naming neither)
    assert line.startswith(f"plume coordinator serve: error: --config {conf}: {words}"), line


FLAG_CASES = {
    "--pool-ttl and --poll": (
        ["--pool-ttl", "2", "--poll", "3"],
        "--pool-ttl 2 must be more than --poll (3 s): waiting devices",
    ),
    "--poll above the default pool-ttl": (
        ["--poll", "61"],
        "--pool-ttl 60 must be more than --poll (61 s)",
    ),
    "--tls-key alone": (["--tls-key", "key.pem"], "--tls-cert and --tls-key go together"),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_flags_keep_the_flags_line(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    flags, words = FLAG_CASES[case]
    code = _serve("--db", str(tmp_path / "x.db"), *flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert (code, served) == (2, [])
    assert err == [err[0]] and err[0].startswith(f"plume coordinator serve: error: {words}"), err
