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
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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


class ResidualStore(MutableMapping[str, UpdateEncoder]):
    """Device id -> `UpdateEncoder`, as a dict, holding at most `budget` bytes of the residuals
    of devices not used in the current round; the rest are on disk.

    Every encoder read or set since the last `end_round` is the round's and stays as it is;
    `end_round` keeps only their residuals (`idle_bytes`) and writes idle ones out, least
    recently used first, until they fit the budget (0: every settled one). An encoder still
    pending, or made with other settings than the first one settled, is kept whole (counted
    by its `state_nbytes`). `directory` is None until the first residual is written out."""

    def __init__(self, spec: ModelSpec, budget: int, *, tmpdir: str | None = None) -> None:
        if budget < 0:
            raise ValueError("the residual budget must be >= 0 bytes")
        self.spec = spec
        self.budget = budget
        self.tmpdir = tmpdir
        self.spills = 0  # residuals written out
        self.restores = 0  # residuals read back
        self.peak_idle_bytes = 0  # the most idle state held after an `end_round`
        self._disk = _SpillFile(spec.size * 4, tmpdir)  # a slot: one residual, float32[d]
        self._round: dict[str, UpdateEncoder] = {}
        # Idle, in memory, least recent first: a residual (None: none to keep) or a whole encoder.
        self._idle: OrderedDict[str, ErrorFeedback | UpdateEncoder | None] = OrderedDict()
        self._sizes: dict[str, int] = {}  # each idle one's bytes
        self._idle_bytes = 0
        self._spilled: dict[str, int] = {}  # device -> its slot in the file (-1: no residual)
        # What a rebuilt encoder is made with: the first settled one's settings, the last's codec.
        self._settings: tuple[bool, float | None] | None = None
        self._config: CodecConfig | None = None

    @property
    def directory(self) -> str | None:
        """The spill directory; None until the first residual is written out."""
        return self._disk.directory

    @property
    def idle_bytes(self) -> int:
        """Bytes held for devices not used in this round (what the budget bounds)."""
        return self._idle_bytes

    @property
    def spilled(self) -> int:
        """How many devices' residuals are on disk now."""
        return len(self._spilled)

    @property
    def disk_bytes(self) -> int:
        """Size of the spill file: one float32[d] slot per device on disk at once, at most."""
        return self._disk.slots * self._disk.record

    def __len__(self) -> int:
        return len(self._round) + len(self._idle) + len(self._spilled)

    def __iter__(self) -> Iterator[str]:
        return iter([*self._round, *self._idle, *self._spilled])

    def __contains__(self, device: object) -> bool:
        return device in self._round or device in self._idle or device in self._spilled

    def __getitem__(self, device: str) -> UpdateEncoder:
        enc = self._round.get(device)
        if enc is not None:
            return enc
        if device in self._idle:
            held = self._idle.pop(device)
            self._idle_bytes -= self._sizes.pop(device)
            enc = held if isinstance(held, UpdateEncoder) else self._rebuild(held)
        elif device in self._spilled:
            enc = self._restore(device)
        else:
            raise KeyError(device)
        self._round[device] = enc
        return enc

    def __setitem__(self, device: str, encoder: UpdateEncoder) -> None:
        self._forget(device)
        self._round[device] = encoder

    def __delitem__(self, device: str) -> None:
        if device not in self:
            raise KeyError(device)
        self._forget(device)

    def end_round(self) -> None:
        """The round is settled: its devices become idle (the most recent), keeping only their
        residuals where they can, and idle residuals are written out, least recently used
        first, until the idle state fits the budget."""
        for device, enc in self._round.items():
            held: ErrorFeedback | UpdateEncoder | None = enc
            size = enc.state_nbytes
            settings = (enc.error_feedback, enc.clip_norm)
            if self._settings is None:
                self._settings = settings
            if not enc.pending and settings == self._settings and enc.spec == self.spec:
                self._config = enc.config
                # Without error feedback the residual is dropped every round: nothing to keep.
                held = enc.feedback if enc.error_feedback else None
                size = 0 if held is None else int(held.residual.nbytes)
            self._idle[device] = held
            self._sizes[device] = size
            self._idle_bytes += size
        self._round.clear()
        kept = 0
        while self._idle_bytes > self.budget and kept < len(self._idle):
            device, held = next(iter(self._idle.items()))
            if isinstance(held, UpdateEncoder):  # pending or odd: stays whole, in memory
                self._idle.move_to_end(device)
                kept += 1
                continue
            self._spill(device, held)
        self.peak_idle_bytes = max(self.peak_idle_bytes, self._idle_bytes)

    def close(self) -> None:
        """Remove the spill directory and forget every device's state."""
        self._disk.close()
        self._round.clear()
        self._idle.clear()
        self._sizes.clear()
        self._idle_bytes = 0
        self._spilled.clear()

    def __enter__(self) -> ResidualStore:
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

    def _spill(self, device: str, held: ErrorFeedback | None) -> None:
        """Write idle `device`'s residual out and drop it from memory."""
        slot = -1
        if held is not None:
            residual = np.ascontiguousarray(held.held())
            slot = self._disk.write([residual.data.cast("B")])
        del self._idle[device]
        self._idle_bytes -= self._sizes.pop(device)
        self._spilled[device] = slot
        self.spills += 1

    def _rebuild(self, held: ErrorFeedback | None) -> UpdateEncoder:
        """A new encoder, made as the settled ones were, holding the residual `held`."""
        assert self._settings is not None and self._config is not None
        error_feedback, clip_norm = self._settings
        enc = UpdateEncoder(
            self.spec, self._config, error_feedback=error_feedback, clip_norm=clip_norm
        )
        if held is not None:
            enc.set_feedback(held)
        return enc

    def _restore(self, device: str) -> UpdateEncoder:
        """A new encoder holding `device`'s residual as it was written out."""
        slot = self._spilled.pop(device)
        held = None
        if slot >= 0:
            held = ErrorFeedback(self.spec.size)
            self._disk.read(slot, [held.residual.data.cast("B")], device)
        self.restores += 1
        return self._rebuild(held)


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


class ParticipantStore(MutableMapping[str, "SecureParticipant"]):
    """Device id -> `sdk.secure.SecureParticipant` of a model of `size` values, as a dict,
    holding at most `budget` bytes of the state of devices not used in the current round; the
    rest are on disk. As `ResidualStore`: every participant read or set since the last
    `end_round` is the round's and stays as it is; `end_round` keeps only the residual and noise
    stream position (`_Slim`, its residual's bytes and 40 counted) of each settled one and
    writes idle ones out, least recently used first, until they fit the budget (0: every
    settled one). A participant with an unsettled input (or another size, or a noise generator
    other than a `CtrRandom`) is kept whole, counted by its residual and unsettled arrays."""

    def __init__(self, size: int, budget: int, *, tmpdir: str | None = None) -> None:
        if budget < 0:
            raise ValueError("the residual budget must be >= 0 bytes")
        self.size = size
        self.budget = budget
        self.spills = 0  # participants written out
        self.restores = 0  # participants read back
        self.peak_idle_bytes = 0  # the most idle state held after an `end_round`
        self._disk = _SpillFile(size * 4 + _STREAM_BYTES, tmpdir)
        self._round: dict[str, SecureParticipant] = {}
        # Idle, in memory, least recent first: slimmed, or whole.
        self._idle: OrderedDict[str, _Slim | SecureParticipant] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._idle_bytes = 0
        self._spilled: dict[str, int] = {}  # device -> its slot in the file

    @property
    def directory(self) -> str | None:
        """The spill directory; None until the first participant is written out."""
        return self._disk.directory

    @property
    def idle_bytes(self) -> int:
        """Bytes held for devices not used in this round (what the budget bounds)."""
        return self._idle_bytes

    @property
    def spilled(self) -> int:
        """How many devices' participants are on disk now."""
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

    def __getitem__(self, device: str) -> SecureParticipant:
        p = self._round.get(device)
        if p is not None:
            return p
        if device in self._idle:
            held = self._idle.pop(device)
            self._idle_bytes -= self._sizes.pop(device)
            p = self._rebuild(held) if isinstance(held, _Slim) else held
        elif device in self._spilled:
            p = self._restore(device)
        else:
            raise KeyError(device)
        self._round[device] = p
        return p

    def __setitem__(self, device: str, participant: SecureParticipant) -> None:
        self._forget(device)
        self._round[device] = participant

    def __delitem__(self, device: str) -> None:
        if device not in self:
            raise KeyError(device)
        self._forget(device)

    def end_round(self) -> None:
        """The round is settled: its devices become idle (the most recent), slimmed where they
        can be, and idle settled ones are written out, least recently used first, until the
        idle state fits the budget."""
        for device, p in self._round.items():
            held: _Slim | SecureParticipant = p
            size = int(p.residual.nbytes)
            position = _stream_position(p.noise_rng)
            residual = np.asarray(p.residual)
            if (
                p.unsettled is None
                and position is not None
                and residual.dtype == np.float32
                and residual.shape == (self.size,)
            ):
                held = _Slim(residual, p.noise_rng.seed, position)
                size += _STREAM_BYTES
            elif p.unsettled is not None:
                size += sum(int(a.nbytes) for a in p.unsettled)
            self._idle[device] = held
            self._sizes[device] = size
            self._idle_bytes += size
        self._round.clear()
        kept = 0
        while self._idle_bytes > self.budget and kept < len(self._idle):
            device, held = next(iter(self._idle.items()))
            if not isinstance(held, _Slim):  # unsettled or odd: stays whole, in memory
                self._idle.move_to_end(device)
                kept += 1
                continue
            self._spill(device, held)
        self.peak_idle_bytes = max(self.peak_idle_bytes, self._idle_bytes)

    def close(self) -> None:
        """Remove the spill directory and forget every device's state."""
        self._disk.close()
        self._round.clear()
        self._idle.clear()
        self._sizes.clear()
        self._idle_bytes = 0
        self._spilled.clear()

    def __enter__(self) -> ParticipantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forget(self, device: str) -> None:
        self._round.pop(device, None)
        if device in self._idle:
            del self._idle[device]
            self._idle_bytes -= self._sizes.pop(device)
        slot = self._spilled.pop(device, None)
        if slot is not None:
            self._disk.free(slot)

    def _spill(self, device: str, held: _Slim) -> None:
        """Write idle `device`'s residual and noise stream out and drop them from memory."""
        residual = np.ascontiguousarray(held.residual)
        stream = held.key + held.position.to_bytes(8, "little")
        slot = self._disk.write([residual.data.cast("B"), stream])
        del self._idle[device]
        self._idle_bytes -= self._sizes.pop(device)
        self._spilled[device] = slot
        self.spills += 1

    def _rebuild(self, held: _Slim) -> SecureParticipant:
        from protocol.secagg import CtrRandom
        from sdk.secure import SecureParticipant

        p = SecureParticipant(self.size, noise_rng=CtrRandom.at(held.key, held.position))
        p.residual = held.residual
        return p

    def _restore(self, device: str) -> SecureParticipant:
        """A participant with `device`'s residual and noise stream as they were written out."""
        slot = self._spilled.pop(device)
        residual = np.empty(self.size, dtype=np.float32)
        stream = bytearray(_STREAM_BYTES)
        self._disk.read(slot, [residual.data.cast("B"), memoryview(stream)], device)
        key, position = bytes(stream[:_KEY_BYTES]), int.from_bytes(stream[_KEY_BYTES:], "little")
        self.restores += 1
        return self._rebuild(_Slim(residual, key, position))
