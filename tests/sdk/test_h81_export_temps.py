"""An export killed while it wrote (SIGKILL, a power loss: no `except` runs) left its hidden
temporaries (`.<name>.<8 hex>.tmp`) in the output folder for good. The next export into that
folder removes them: only names of that exact form, for the files it writes; anything else in
the folder is left alone. The first test failed before the fix."""

from __future__ import annotations

from pathlib import Path

from sdk import onnx_export

FILES = {"train_step.onnx": b"train", "infer.onnx": b"infer", "manifest.json": b"{}\n"}
STALE = [".train_step.onnx.0badc0de.tmp", ".infer.onnx.12345678.tmp", ".manifest.json.abcdef01.tmp"]
OTHERS = [
    ".manifest.json.tmp",  # no token
    ".manifest.json.ABCDEF01.tmp",  # not the exporter's lower-case hex
    ".manifest.json.abcdef012.tmp",  # nine digits
    ".notes.txt.abcdef01.tmp",  # not a file the export writes
    "manifest.json.abcdef01.tmp",  # not hidden
    ".infer.onnx.12345678.tmp.bak",
    "notes.txt",
]


def test_the_next_export_removes_a_killed_exports_temporaries(tmp_path: Path) -> None:
    # Prepare: what a killed export left, among files that are not its own
    for name in STALE + OTHERS:
        (tmp_path / name).write_bytes(b"left")
    # Execute
    onnx_export._write_files(tmp_path, FILES)
    # Assert: the artifacts, the other files, and no temporary of the exporter's form
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([*FILES, *OTHERS])
    for name, data in FILES.items():
        assert (tmp_path / name).read_bytes() == data


def test_a_folder_named_like_a_temporary_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / ".infer.onnx.12345678.tmp").mkdir()
    onnx_export._write_files(tmp_path, FILES)
    assert (tmp_path / ".infer.onnx.12345678.tmp").is_dir()


def test_a_symlink_named_like_a_temporary_is_removed_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "kept.bin"
    target.write_bytes(b"data")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".manifest.json.abcdef01.tmp").symlink_to(target)
    onnx_export._write_files(out, FILES)
    assert not (out / ".manifest.json.abcdef01.tmp").is_symlink()
    assert target.read_bytes() == b"data"
