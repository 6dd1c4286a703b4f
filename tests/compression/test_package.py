"""The package surface: imports without torch, and `__all__` is honest."""

from __future__ import annotations

import subprocess
import sys

import compression


def test_imports_and_decodes_without_torch() -> None:
    # A meta-path hook makes `import torch` fail, as on a device without it.
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
import numpy as np
import compression
spec = compression.ModelSpec.from_shapes([("w", (100,))])
codec = compression.UpdateCodec(spec, compression.CodecConfig(0.1, 4))
frame, _ = codec.encode(np.ones(100, np.float32), np.random.default_rng(0))
assert codec.decode(frame).nnz == 10
assert "torch" not in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_all_is_exported_and_sorted() -> None:
    names = compression.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(compression, name) is not None
    public = {n for n in dir(compression) if not n.startswith("_")}
    assert public - set(names) <= set()


def test_wire_format_doc_example_runs() -> None:
    # The worked example in docs/wire-format.md is real code with a pinned result.
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "wire-format.md").read_text()
    blocks = doc.split("```python\n")[1:]
    assert blocks, "docs/wire-format.md lost its python example"
    for block in blocks:
        exec(compile(block.split("```")[0], "wire-format.md", "exec"), {})
