"""The simulator's per-device encoder state: resident up to a memory budget, the rest on disk.

Each device the simulator has trained keeps an `UpdateEncoder` between rounds: its error-feedback
residual (float32[d]) and, until the round settles it, the u its upload would restore. Kept in a
plain dict, that grew with every distinct device ever trained (6.6 MB a device for the MNIST
CNN). `ResidualStore` keeps the encoders of devices outside the current round resident up to
`budget_bytes` of residuals, as the residual alone (an encoder's codec holds a zstd context of
about 32 KB once it has encoded: three times a digits MLP's residual); beyond the budget the least
recently used residual is written, raw float32, to a slot of one file in a private temporary
directory (`tempfile`: $TMPDIR, else /tmp) and dropped. The next use builds a new encoder with
the residual, read back bit for bit.

Only a settled encoder (no pending upload: after accepted, refused or dropped) is slimmed or
written out, and only between rounds (`end_round`): every device used in a round keeps its
encoder until then. An encoder without error feedback has no state to keep and is only dropped. `close` removes the
directory; a store never closed removes it when collected or at interpreter exit.

`ParticipantStore` does the same for a secure run's `sdk.secure.SecureParticipant`s: an idle
settled participant is held as its residual and its noise stream's key and position (its
`CtrRandom` is rebuilt at that position, the 64 KiB keystream buffer regenerated), and spilled
to one record of residual, key and position. A participant with an unsettled masked input is
never slimmed nor written out.
"""

from __future__ import annotations

import io
import math
import shutil
import tempfile
import weakref
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Self, TypeVar, cast

import numpy as np

from compression import CodecConfig, ErrorFeedback, ModelSpec
from sdk.device import UpdateEncoder

if TYPE_CHECKING:  # loaded with a secure run only (the plain runner imports this module)
    from protocol.secagg import CtrRandom
    from sdk.secure import SecureParticipant

__all__ = ["DEFAULT_RESIDUAL_MEMORY_MB", "ParticipantStore", "ResidualStore", "budget_bytes"]

# The default budget of encoder state held in memory (MiB): about 55,000 devices' residuals of
# the digits MLP (9.6 KB each), 80 of the MNIST CNN (6.6 MB each).
DEFAULT_RESIDUAL_MEMORY_MB = 512.0


def budget_bytes(mb: float) -> int:
    """`mb` MiB in bytes (`ValueError` unless finite and >= 0)."""
    if isinstance(mb, bool) or not (isinstance(mb, (int, float)) and math.isfinite(mb) and mb >= 0):
        raise ValueError(f"residual_memory_mb must be a finite number of MiB >= 0, got {mb!r}")
    return int(mb * 2**20)


def _remove(directory: str, file: io.BufferedRandom) -> None:
    file.close()
    shutil.rmtree(directory, ignore_errors=True)


class _SpillFile:
    """Records of `record` bytes in slots of one file in a private temporary directory
    (`tempfile`: $TMPDIR, else /tmp), made at the first write. `close` removes the directory,
    as does collection or interpreter exit. `directory` is None until then."""

    def __init__(self, record: int, tmpdir: str | None) -> None:
        self.record = record
        self.tmpdir = tmpdir
        self.directory: str | None = None
        self.slots = 0  # the file's length in records
        self._free: list[int] = []
        self._file: io.BufferedRandom | None = None
        self._finalizer: weakref.finalize | None = None

    def _open(self) -> io.BufferedRandom:
        if self._file is None:
            self.directory = tempfile.mkdtemp(prefix="plume-residuals-", dir=self.tmpdir)
            self._file = open(f"{self.directory}/residuals.f32", "w+b")  # noqa: SIM115
            self._finalizer = weakref.finalize(self, _remove, self.directory, self._file)
        return self._file

    def write(self, parts: Sequence[memoryview | bytes]) -> int:
        """Write one record (`parts` in turn, `record` bytes in all) to a free slot; its slot."""
        slot = self._free.pop() if self._free else self.slots
        file = self._open()
        try:
            file.seek(slot * self.record)
            for part in parts:
                file.write(part)
            file.flush()
        except OSError as exc:
            self._free.append(slot)
            raise OSError(
                exc.errno,
                f"could not write a device's residual to {self.directory} ({exc.strerror}): "
                "point TMPDIR at a disk with room, or raise --residual-memory-mb",
            ) from exc
        self.slots = max(self.slots, slot + 1)
        return slot

    def read(self, slot: int, into: Sequence[memoryview], device: str) -> None:
        """Read the record of `slot` into the buffers `into` (`record` bytes in all) and free
        the slot."""
        file = self._open()
        file.seek(slot * self.record)
        got = sum(file.readinto(buffer) or 0 for buffer in into)
        if got != self.record:
            raise OSError(f"the spilled residual of device {device!r} was cut short")
        self._free.append(slot)

    def free(self, slot: int) -> None:
        self._free.append(slot)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._file = None
        self.directory = None
        self._free.clear()
        self.slots = 0


# A noise stream's key (CtrRandom's seed) and the bytes it has given (uint64, little-endian).
_KEY_BYTES = 32
_STREAM_BYTES = _KEY_BYTES + 8


@dataclass(frozen=True)
class _Slim:
    """An idle settled participant: its residual and its noise stream's key and position."""

    residual: np.ndarray
    key: bytes
    position: int


def _stream_position(rng: CtrRandom) -> int | None:
    """How many bytes `rng` has used (`CtrRandom.position`): a new `CtrRandom` of its key
    moved there (`CtrRandom.at`) gives the same bytes after. None for a generator of another
    kind or key length (kept whole)."""
    from protocol.secagg import CtrRandom

    if type(rng) is not CtrRandom or len(rng.seed) != _KEY_BYTES:
        return None
    return rng.position


V = TypeVar("V")  # what a store maps a device to: an encoder, a participant
H = TypeVar("H")  # what it holds in memory for an idle device it slimmed


class _IdleStore(MutableMapping[str, V], Generic[V, H]):
    """Device id -> V, as a dict, holding at most `budget` bytes of the state of devices not
    used in the current round; the rest as records of `record` bytes in a `_SpillFile`.

    Every value read or set since the last `end_round` is the round's and stays as it is;
    `end_round` slims each one it can (`_settle`) and writes idle slimmed ones out, least
    recently used first, until they fit the budget (0: every one it can); one it keeps whole
    stays in memory. A subclass says how a value is slimmed (`_settle`, `_is_slim`), written
    (`_record`), rebuilt (`_thaw`) and read back (`_restore`)."""

    def __init__(self, budget: int, record: int, tmpdir: str | None) -> None:
        if budget < 0:
            raise ValueError("the residual budget must be >= 0 bytes")
        self.budget = budget
        self.tmpdir = tmpdir
        self.spills = 0  # devices' state written out
        self.restores = 0  # devices' state read back
        self.peak_idle_bytes = 0  # the most idle state held after an `end_round`
        self._disk = _SpillFile(record, tmpdir)
        self._round: dict[str, V] = {}
        # Idle, in memory, least recent first: slimmed (H), or whole (V).
        self._idle: OrderedDict[str, H | V] = OrderedDict()
        self._sizes: dict[str, int] = {}  # each idle one's bytes
        self._idle_bytes = 0
        self._spilled: dict[str, int] = {}  # device -> its slot in the file (-1: none written)

    # What a subclass defines.
    @abstractmethod
    def _settle(self, value: V) -> tuple[H | V, int]:
        """What to hold in memory for `value` as its round ends, and its bytes."""

    @abstractmethod
    def _is_slim(self, held: H | V) -> bool:
        """Whether `held` is slimmed (only a slimmed one is written out or thawed)."""

    @abstractmethod
    def _record(self, held: H) -> list[memoryview | bytes] | None:
        """A slimmed value's record (`record` bytes, in parts); None: nothing to write."""

    @abstractmethod
    def _thaw(self, held: H) -> V:
        """The value a slimmed one stands for."""

    @abstractmethod
    def _restore(self, slot: int, device: str) -> V:
        """The value written to `slot` (-1: none was), read back with `_disk.read`."""

    @property
    def directory(self) -> str | None:
        """The spill directory; None until the first record is written out."""
        return self._disk.directory

    @property
    def idle_bytes(self) -> int:
        """Bytes held for devices not used in this round (what the budget bounds)."""
        return self._idle_bytes

    @property
    def spilled(self) -> int:
        """How many devices' state is on disk now."""
        return len(self._spilled)

    @property
    def disk_bytes(self) -> int:
        """Size of the spill file: one slot per device on disk at once, at most."""
        return self._disk.slots * self._disk.record

    def __len__(self) -> int:
        return len(self._round) + len(self._idle) + len(self._spilled)

    def __iter__(self) -> Iterator[str]:
        return iter([*self._round, *self._idle, *self._spilled])

    def __contains__(self, device: object) -> bool:
        return device in self._round or device in self._idle or device in self._spilled

    def __getitem__(self, device: str) -> V:
        value = self._round.get(device)
        if value is not None:
            return value
        if device in self._idle:
            held = self._idle.pop(device)
            self._idle_bytes -= self._sizes.pop(device)
            value = self._thaw(cast(H, held)) if self._is_slim(held) else cast(V, held)
        elif device in self._spilled:
            value = self._restore(self._spilled.pop(device), device)
            self.restores += 1
        else:
            raise KeyError(device)
        self._round[device] = value
        return value

    def __setitem__(self, device: str, value: V) -> None:
        self._forget(device)
        self._round[device] = value

    def __delitem__(self, device: str) -> None:
        if device not in self:
            raise KeyError(device)
        self._forget(device)

    def end_round(self) -> None:
        """The round is settled: its devices become idle (the most recent), slimmed where they
        can be, and idle slimmed ones are written out, least recently used first, until the
        idle state fits the budget."""
        for device, value in self._round.items():
            held, size = self._settle(value)
            self._idle[device] = held
            self._sizes[device] = size
            self._idle_bytes += size
        self._round.clear()
        kept = 0
        while self._idle_bytes > self.budget and kept < len(self._idle):
            device, held = next(iter(self._idle.items()))
            if not self._is_slim(held):  # pending or odd: stays whole, in memory
                self._idle.move_to_end(device)
                kept += 1
                continue
            parts = self._record(cast(H, held))
            slot = -1 if parts is None else self._disk.write(parts)
            del self._idle[device]
            self._idle_bytes -= self._sizes.pop(device)
            self._spilled[device] = slot
            self.spills += 1
        self.peak_idle_bytes = max(self.peak_idle_bytes, self._idle_bytes)

    def close(self) -> None:
        """Remove the spill directory and forget every device's state."""
        self._disk.close()
        self._round.clear()
        self._idle.clear()
        self._sizes.clear()
        self._idle_bytes = 0
        self._spilled.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forget(self, device: str) -> None:
        self._round.pop(device, None)
        if device in self._idle:
            del self._idle[device]
            self._idle_bytes -= self._sizes.pop(device)
        slot = self._spilled.pop(device, None)
        if slot is not None and slot >= 0:
            self._disk.free(slot)


class ResidualStore(_IdleStore[UpdateEncoder, "ErrorFeedback | None"]):
    """Device id -> `UpdateEncoder`, as a dict, holding at most `budget` bytes of the residuals
    of devices not used in the current round; the rest are on disk.

    Every encoder read or set since the last `end_round` is the round's and stays as it is;
    `end_round` keeps only their residuals (`idle_bytes`) and writes idle ones out, least
    recently used first, until they fit the budget (0: every settled one). An encoder still
    pending, or made with other settings than the first one settled, is kept whole (counted
    by its `state_nbytes`). `directory` is None until the first residual is written out."""

    def __init__(self, spec: ModelSpec, budget: int, *, tmpdir: str | None = None) -> None:
        super().__init__(budget, spec.size * 4, tmpdir)  # a record: one residual, float32[d]
        self.spec = spec
        # What a rebuilt encoder is made with: the first settled one's settings, the last's codec.
        self._settings: tuple[bool, float | None] | None = None
        self._config: CodecConfig | None = None

    def _settle(self, value: UpdateEncoder) -> tuple[ErrorFeedback | UpdateEncoder | None, int]:
        settings = (value.error_feedback, value.clip_norm)
        if self._settings is None:
            self._settings = settings
        if not value.pending and settings == self._settings and value.spec == self.spec:
            self._config = value.config
            # Without error feedback the residual is dropped every round: nothing to keep.
            held = value.feedback if value.error_feedback else None
            return held, 0 if held is None else int(held.residual.nbytes)
        return value, value.state_nbytes

    def _is_slim(self, held: ErrorFeedback | UpdateEncoder | None) -> bool:
        return not isinstance(held, UpdateEncoder)

    def _record(self, held: ErrorFeedback | None) -> list[memoryview | bytes] | None:
        if held is None:
            return None
        return [np.ascontiguousarray(held.held()).data.cast("B")]

    def _thaw(self, held: ErrorFeedback | None) -> UpdateEncoder:
        """A new encoder, made as the settled ones were, holding the residual `held`."""
        assert self._settings is not None and self._config is not None
        error_feedback, clip_norm = self._settings
        enc = UpdateEncoder(
            self.spec, self._config, error_feedback=error_feedback, clip_norm=clip_norm
        )
        if held is not None:
            enc.set_feedback(held)
        return enc

    def _restore(self, slot: int, device: str) -> UpdateEncoder:
        """A new encoder holding `device`'s residual as it was written out."""
        held = None
        if slot >= 0:
            held = ErrorFeedback(self.spec.size)
            self._disk.read(slot, [held.residual.data.cast("B")], device)
        return self._thaw(held)


class ParticipantStore(_IdleStore["SecureParticipant", _Slim]):
    """Device id -> `sdk.secure.SecureParticipant` of a model of `size` values, as a dict,
    holding at most `budget` bytes of the state of devices not used in the current round; the
    rest are on disk. As `ResidualStore`: every participant read or set since the last
    `end_round` is the round's and stays as it is; `end_round` keeps only the residual and noise
    stream position (`_Slim`, its residual's bytes and 40 counted) of each settled one and
    writes idle ones out, least recently used first, until they fit the budget (0: every
    settled one). A participant with an unsettled input (or another size, or a noise generator
    other than a `CtrRandom`) is kept whole, counted by its residual and unsettled arrays."""

    def __init__(self, size: int, budget: int, *, tmpdir: str | None = None) -> None:
        super().__init__(budget, size * 4 + _STREAM_BYTES, tmpdir)
        self.size = size

    def _settle(self, value: SecureParticipant) -> tuple[_Slim | SecureParticipant, int]:
        size = int(value.residual.nbytes)
        position = _stream_position(value.noise_rng)
        residual = np.asarray(value.residual)
        if (
            value.unsettled is None
            and position is not None
            and residual.dtype == np.float32
            and residual.shape == (self.size,)
        ):
            return _Slim(residual, value.noise_rng.seed, position), size + _STREAM_BYTES
        if value.unsettled is not None:
            size += sum(int(a.nbytes) for a in value.unsettled)
        return value, size

    def _is_slim(self, held: _Slim | SecureParticipant) -> bool:
        return isinstance(held, _Slim)

    def _record(self, held: _Slim) -> list[memoryview | bytes]:
        residual = np.ascontiguousarray(held.residual)
        return [residual.data.cast("B"), held.key + held.position.to_bytes(8, "little")]

    def _thaw(self, held: _Slim) -> SecureParticipant:
        from protocol.secagg import CtrRandom
        from sdk.secure import SecureParticipant

        p = SecureParticipant(self.size, noise_rng=CtrRandom.at(held.key, held.position))
        p.residual = held.residual
        return p

    def _restore(self, slot: int, device: str) -> SecureParticipant:
        """A participant with `device`'s residual and noise stream as they were written out."""
        residual = np.empty(self.size, dtype=np.float32)
        stream = bytearray(_STREAM_BYTES)
        self._disk.read(slot, [residual.data.cast("B"), memoryview(stream)], device)
        key, position = bytes(stream[:_KEY_BYTES]), int.from_bytes(stream[_KEY_BYTES:], "little")
        return self._thaw(_Slim(residual, key, position))
