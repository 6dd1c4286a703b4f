"""A --db that names a file which is not SQLite (the TOML config given by mistake) is refused
with a line that says to check the path first; it said only "restore a backup", the fix for a
corrupt database, not for a wrong path. The file is left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service import Store
from coordinator.service.store import StoreError


def test_a_config_file_given_as_the_database_says_check_the_path(tmp_path: Path) -> None:
    # Prepare: a TOML config where the database should be
    config = tmp_path / "plume.toml"
    text = 'db = "plume.db"\nport = 8080\nadmin-token = "x"\n' * 20
    config.write_text(text)
    # Execute
    with pytest.raises(StoreError) as caught:
        Store(config)
    # Assert: the path, the reason, both ways out; the file untouched
    message = str(caught.value)
    assert message.startswith(f"cannot use the database {config}: it is not a SQLite database")
    assert "check that the path names the coordinator's database" in message
    assert message.endswith("or restore a backup")
    assert config.read_text() == text
