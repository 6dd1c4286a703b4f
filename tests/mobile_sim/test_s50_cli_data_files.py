"""s50 review, item 3: where the simulator's data comes from was written only in
../shared/data/README.md, outside the repository. docs/simulator.md's "The files it reads" now
lists each file `plume sim` reads under the data folder, its source and its sha256; the README
links to it. These checks keep the table equal to what the loaders open, and its checksums to
the files where they are present."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest

from mobile_sim.data import data_root
from mobile_sim.runner import load_dataset

ROOT = Path(__file__).resolve().parents[2]
HEADING = "### The files it reads"


def _table() -> dict[str, list[tuple[str, str | None]]]:
    """--dataset -> [(file read, its sha256 or None)], from the table under `HEADING`."""
    text = (ROOT / "docs" / "simulator.md").read_text()
    assert text.count(HEADING) == 1
    section = text.split(HEADING, 1)[1].split("\n#", 1)[0]
    rows: dict[str, list[tuple[str, str | None]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not line.startswith("| `") or len(cells) != 4 or cells[0] == "`--dataset`":
            continue  # not a row, or the header
        names = re.findall(r"`([^`]+)`", cells[0])
        path = re.match(r"`([^`]+)`", cells[1])
        sha = re.fullmatch(r"`([0-9a-f]{64})`", cells[3])
        for name in names:
            entry = rows.setdefault(name, [])
            if path is not None:
                entry.append((path.group(1), sha.group(1) if sha else None))
    return rows


def _opened(monkeypatch: pytest.MonkeyPatch, root: Path) -> list[str]:
    """Paths under `root` the loaders open from now on (gzip files, and text read as bytes)."""
    seen: list[str] = []
    gzip_open, read_bytes = gzip.open, Path.read_bytes

    def record(path: object) -> None:
        p = Path(str(path)).resolve()
        if root.resolve() in p.parents:
            seen.append(p.relative_to(root.resolve()).as_posix())

    def opening(path: object, *args: object, **kwargs: object) -> object:
        record(path)
        return gzip_open(path, *args, **kwargs)  # type: ignore[call-overload]

    def reading(self: Path) -> bytes:
        record(self)
        return read_bytes(self)

    monkeypatch.setattr(gzip, "open", opening)
    monkeypatch.setattr(Path, "read_bytes", reading)
    return seen


def test_the_table_lists_the_datasets_and_their_files() -> None:
    table = _table()
    assert sorted(table) == sorted(
        ["mnist", "shakespeare", "digits", "synthetic", "synthetic(α,β)", "synthetic_iid"]
    )
    assert table["mnist"] == [
        ("mnist-t10k/t10k-images-idx3-ubyte.gz", table["mnist"][0][1]),
        ("mnist-t10k/t10k-labels-idx1-ubyte.gz", table["mnist"][1][1]),
    ]
    assert [p for p, _ in table["shakespeare"]] == ["tinyshakespeare/input.txt"]
    assert all(sha for rows in table.values() for _, sha in rows)
    assert table["digits"] == table["synthetic"] == table["synthetic_iid"] == []


@pytest.mark.parametrize("dataset", ["mnist", "shakespeare"])
def test_each_loader_opens_exactly_the_files_the_table_lists(
    dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the data folder the suite reads ($PLUME_DATA, else ../shared/data)
    root = data_root()
    listed = [path for path, _ in _table()[dataset]]
    if not all((root / path).is_file() for path in listed):
        pytest.skip(f"{dataset}'s files are not in {root}")
    seen = _opened(monkeypatch, root)

    # Execute
    load_dataset(dataset, str(root))

    # Assert
    assert sorted(set(seen)) == sorted(listed)


@pytest.mark.parametrize("dataset", ["digits", "synthetic", "synthetic(0.5,0.5)", "synthetic_iid"])
def test_the_datasets_without_a_file_read_nothing_from_the_data_folder(
    dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _opened(monkeypatch, tmp_path)
    data = load_dataset(dataset, str(tmp_path))  # an empty folder: nothing there to read
    assert len(data.x_train) > 0 and seen == []


def test_the_checksums_are_the_files() -> None:
    root = data_root()
    checked = 0
    for rows in _table().values():
        for path, sha in rows:
            if not (root / path).is_file():
                continue
            assert hashlib.sha256((root / path).read_bytes()).hexdigest() == sha, path
            checked += 1
    if checked == 0:
        pytest.skip(f"no data files in {root}")


def test_the_readme_links_the_table_where_it_names_the_data_folder() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    sentence = readme.split("read data from `../shared/data`", 1)[1].split(". ", 1)[0]
    assert "(docs/simulator.md#the-files-it-reads)" in sentence
