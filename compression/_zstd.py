"""zstd with reusable per-thread contexts and a decoder that checks the frame before inflating."""

from __future__ import annotations

import threading

import zstandard

from ._bits import ByteView
from ._config import _shown, check_zstd_level
from ._errors import DecompressionError, SizeLimitExceeded, TrailingBytes, TruncatedFrame

__all__ = ["ZstdCodec", "zstd_frame_length"]

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _check_magic(data: ByteView) -> None:
    # Only a regular zstd frame is accepted: no skippable frames, no legacy formats.
    if bytes(data[:4]) != _ZSTD_MAGIC:
        raise DecompressionError(
            f"payload does not start with the zstd magic: {bytes(data[:4]).hex()}"
        )


def zstd_frame_length(data: ByteView) -> int:
    """Bytes taken by the one zstd frame at the start of `data` (walks the block headers).

    A diagnostic for tests and tools; the decoder does not call it (`ZstdCodec.decompress`
    refuses bytes after the frame in C, without a Python loop over the blocks).
    """
    _check_magic(data)
    try:
        params = zstandard.get_frame_parameters(data)
        pos = zstandard.frame_header_size(data)
    except zstandard.ZstdError as exc:
        raise DecompressionError(f"not a zstd frame header: {exc}") from exc
    n = len(data)
    while True:
        if pos + 3 > n:
            raise TruncatedFrame(f"zstd frame cut inside a block header at payload byte {pos}")
        header = int.from_bytes(data[pos : pos + 3], "little")
        pos += 3
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3:
            raise DecompressionError(f"zstd block of reserved type at payload byte {pos - 3}")
        pos += 1 if kind == 1 else size
        if pos > n:
            raise TruncatedFrame(f"zstd block runs past the payload end ({pos} > {n} bytes)")
        if last:
            break
    if params.has_checksum:
        pos += 4
        if pos > n:
            raise TruncatedFrame("zstd frame cut inside its checksum")
    return pos


class ZstdCodec:
    """zstd compress/decompress with contexts reused per thread (zstd contexts are not thread-safe).

    Compressed frames always declare their content size; `decompress` refuses frames that do
    not, that declare another size than the caller expects, that ask for a window above
    `max_window` bytes, or that are followed by any byte.

    `level` is an int in [-7, 22] and `max_window` a power of two from 2**10 to 2**31 bytes (the
    windows `DecodeLimits` allows), else ValueError. Before, they were used unchecked: level
    2**63 was an OverflowError and 3.0 a TypeError at the first compress, a max_window of 1000
    or 2**40 a zstandard.ZstdError, and 1.5 an AttributeError.
    """

    def __init__(self, level: int = 3, max_window: int = 1 << 24) -> None:
        check_zstd_level(level, "level")
        if (
            isinstance(max_window, bool)
            or not isinstance(max_window, int)
            or not 1 << 10 <= max_window <= 1 << 31
            or max_window & (max_window - 1)
        ):
            raise ValueError(
                f"max_window must be a power of two from 2**10 to 2**31 bytes, got {_shown(max_window)}"
            )
        self.level = level
        self.max_window = max_window
        self._local = threading.local()

    def _cctx(self) -> zstandard.ZstdCompressor:
        cctx: zstandard.ZstdCompressor | None = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = zstandard.ZstdCompressor(
                level=self.level, write_content_size=True, write_checksum=False
            )
            self._local.cctx = cctx
        return cctx

    def _dctx(self) -> zstandard.ZstdDecompressor:
        dctx: zstandard.ZstdDecompressor | None = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = zstandard.ZstdDecompressor(max_window_size=self.max_window)
            self._local.dctx = dctx
        return dctx

    def compress(self, data: bytes) -> bytes:
        """One zstd frame with the content size in its header and a window of at most
        `max_window` bytes, so that a decoder under the same cap accepts it."""
        out = self._cctx().compress(data)
        if zstandard.get_frame_parameters(out).window_size <= self.max_window:
            return out
        # A frame that fits its level's window is one segment whose window is its whole
        # content, and levels 20-22 ask for up to 128 MiB: recompress within the cap. Only
        # payloads above the cap get here; every other frame keeps its bytes.
        params = zstandard.ZstdCompressionParameters.from_level(
            self.level,
            source_size=len(data),
            window_log=self.max_window.bit_length() - 1,
            write_content_size=1,
            write_checksum=0,
        )
        return zstandard.ZstdCompressor(compression_params=params).compress(data)

    def decompress(self, data: ByteView, expected_size: int) -> bytes:
        """Inflate exactly one frame that declares `expected_size` bytes; at most that is allocated."""
        _check_magic(data)
        try:
            params = zstandard.get_frame_parameters(data)
        except zstandard.ZstdError as exc:
            raise DecompressionError(f"not a zstd frame header: {exc}") from exc
        declared = params.content_size
        if declared == zstandard.CONTENTSIZE_UNKNOWN:
            raise DecompressionError("zstd frame does not declare its content size")
        if declared > expected_size:
            raise SizeLimitExceeded(
                f"zstd frame declares {declared} bytes of content; the header allows {expected_size}"
            )
        if declared != expected_size:
            raise DecompressionError(
                f"zstd frame declares {declared} bytes of content; the header says {expected_size}"
            )
        if params.window_size > self.max_window:
            raise DecompressionError(
                f"zstd window of {params.window_size} bytes above the cap of {self.max_window}"
            )
        # One call in C checks the whole frame, its blocks and that nothing follows it. (A
        # Python walk over the block headers cost ~0.5 s for a payload of 3-byte empty blocks.)
        dctx = self._dctx()
        try:
            out = dctx.decompress(data, max_output_size=expected_size, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            try:
                # Only for a refused payload: is the frame itself sound, with bytes after it?
                dctx.decompress(data, max_output_size=expected_size, allow_extra_data=True)
            except zstandard.ZstdError:
                raise DecompressionError(f"zstd refused the payload: {exc}") from exc
            raise TrailingBytes(f"bytes after the zstd frame in the payload: {exc}") from exc
        if len(out) != expected_size:
            raise DecompressionError(
                f"zstd produced {len(out)} bytes; the frame declared {expected_size}"
            )
        return out
