"""The flat layout of a model: tensor names, shapes and offsets into one float32 vector."""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["TensorEntry", "ModelSpec"]

# A model larger than this is not a device model; refusing it keeps every derived cap sane.
MAX_MODEL_SIZE = 1 << 31


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor's place in the flat vector: `size` scalars starting at `offset`."""

    name: str
    shape: tuple[int, ...]
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The canonical flattening of a model's parameters.

    The fingerprint is 8 bytes of SHA-256 over the names, shapes and dtype, so both sides can
    tell at once whether they agree on the layout before trusting any declared size.
    """

    entries: tuple[TensorEntry, ...]

    def __post_init__(self) -> None:
        offset = 0
        names: set[str] = set()
        for e in self.entries:
            if not isinstance(e.name, str) or "\0" in e.name:
                # The fingerprint ends each name with a NUL: one inside a name let two layouts
                # hash alike ("a\0" + "3" against "a" + "1", "3"), so a frame of one decoded
                # under the other.
                raise ValueError(f"tensor name {e.name!r} must be text with no NUL character")
            if not isinstance(e.shape, tuple) or not all(
                type(s) is int and s >= 0 for s in e.shape
            ):
                # As from_shapes and from_json require: (2.0, 3.0) hashed apart from (2, 3), and
                # (-2, -3) passed here but not through from_json(to_json()).
                raise ValueError(
                    f"tensor {e.name!r}: shape must be a tuple of integers >= 0, got {e.shape!r}"
                )
            if any(s > MAX_MODEL_SIZE for s in e.shape):
                # Only a tensor with a zero dimension could hold one, and its decimal text is
                # hashed into the fingerprint: 10**5000 made every fingerprint (so every encode
                # and decode) raise Python's int-to-text limit error, and the size message too.
                raise ValueError(
                    f"tensor {e.name!r}: a dimension is above {MAX_MODEL_SIZE} (2^31, the "
                    "largest model)"
                )
            if e.offset != offset or e.size != math.prod(e.shape):
                raise ValueError(f"inconsistent layout at tensor {e.name!r}")
            if e.name in names:
                raise ValueError(f"duplicate tensor name {e.name!r}")
            try:
                e.name.encode()  # the fingerprint hashes it as UTF-8
            except UnicodeEncodeError:
                raise ValueError(
                    f"tensor name {e.name!r} is not Unicode text (an unpaired surrogate)"
                ) from None
            names.add(e.name)
            offset += e.size
        if offset <= 0 or offset > MAX_MODEL_SIZE:
            raise ValueError(f"model size {offset} outside 1..{MAX_MODEL_SIZE}")

    @classmethod
    def from_shapes(cls, shapes: Iterable[tuple[str, Sequence[int]]]) -> ModelSpec:
        """Build a spec from `(name, shape)` pairs, in order."""
        entries = []
        offset = 0
        for name, shape in shapes:
            dims = tuple(shape)
            for s in dims:
                # int(2.7) is 2 and int("4") is 4: a bad shape would hash as another layout.
                if isinstance(s, bool) or not isinstance(s, numbers.Integral):
                    raise ValueError(f"tensor {name!r}: dimension {s!r} is not an integer")
            shp = tuple(int(s) for s in dims)
            if any(s < 0 for s in shp):
                raise ValueError(f"negative dimension in {name!r}: {shp}")
            size = math.prod(shp)
            entries.append(TensorEntry(name, shp, offset, size))
            offset += size
        return cls(tuple(entries))

    @property
    def size(self) -> int:
        """Number of float32 scalars (d)."""
        last = self.entries[-1]
        return last.offset + last.size

    @property
    def dense_bytes(self) -> int:
        """Bytes of the dense fp32 vector: the baseline every ratio is measured against."""
        return 4 * self.size

    @property
    def fingerprint(self) -> bytes:
        """8 bytes identifying the layout (SHA-256 of its canonical text)."""
        h = hashlib.sha256(b"plume-spec-v1\0float32\0")
        for e in self.entries:
            h.update(e.name.encode() + b"\0" + ",".join(map(str, e.shape)).encode() + b"\0")
        return h.digest()[:8]

    def boundaries(self) -> list[tuple[int, int]]:
        """`(start, stop)` of each tensor in the flat vector."""
        return [(e.offset, e.offset + e.size) for e in self.entries]

    def to_json(self) -> list[dict[str, object]]:
        return [{"name": e.name, "shape": list(e.shape)} for e in self.entries]

    @classmethod
    def from_json(cls, data: Sequence[dict[str, object]]) -> ModelSpec:
        """The inverse of `to_json`; anything else is a `ValueError` (never a KeyError or a
        TypeError, and no silent coercion of `true`, `2.7` or `"4"` to a dimension)."""
        if not isinstance(data, (list, tuple)):
            raise ValueError(
                f"a model spec must be a list of {{'name', 'shape'}} objects, got "
                f"{type(data).__name__}"
            )
        pairs: list[tuple[str, Sequence[int]]] = []
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "name" not in item or "shape" not in item:
                raise ValueError(f"spec entry {i} must be an object with 'name' and 'shape'")
            name, shape = item["name"], item["shape"]
            if not isinstance(name, str) or not isinstance(shape, list):
                raise ValueError("spec entries need a string name and a list shape")
            if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape):
                raise ValueError(f"spec entry {name!r}: dimensions must be integers, got {shape}")
            pairs.append((name, [int(s) for s in shape]))
        return cls.from_shapes(pairs)
