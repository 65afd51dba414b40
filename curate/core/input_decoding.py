"""Input files as the bytes their reader expects: decompressed and, for text, UTF-8.

- Compression is named by the file's last suffix (``urls.csv.gz``, ``.bz2``, ``.zst``,
  ``.zstd``) and undone while reading, with pyarrow's codecs; the name without it gives
  the format (``urls.csv.gz`` is CSV).
- Text (CSV, TSV, JSON lines) is read as UTF-8. A UTF-16 or UTF-32 byte-order mark, or an
  ``input.encoding`` other than UTF-8, transcodes the file to UTF-8 while it is read; a
  byte that is not valid in that encoding stops the read with ``Undecodable`` (where).
- ``not_utf8_message`` explains a file that is not UTF-8: the file, the byte offset and
  line of the first byte that is not, and the encoding the file looks like (guessed by
  charset_normalizer), with the ``input.encoding`` to set.

It sits with the infrastructure (curate.core): the config uses ``split_compression``.
"""

from __future__ import annotations

import codecs
import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

# Last suffix -> pyarrow codec name.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}
# Byte-order marks that name an encoding other than UTF-8 (UTF-32 first: its LE mark
# begins with UTF-16's). A UTF-8 mark needs nothing: pyarrow's readers skip it.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_CHUNK = 1 << 20
# Common encodings, most common first: named first when charset_normalizer can't tell
# them from its best guess.
_PREFERRED = ("cp1252", "cp1251", "cp932", "gb18030", "big5", "euc_kr", "cp1250", "latin_1")


def split_compression(path: str) -> tuple[str, str | None]:
    """``"a/urls.csv.gz"`` -> ``("a/urls.csv", "gzip")``; a path without a known
    compression suffix -> ``(path, None)``."""
    lowered = path.lower()
    for suffix, codec in COMPRESSIONS.items():
        if lowered.endswith(suffix):
            return path[: -len(suffix)], codec
    return path, None


def is_utf8(encoding: str) -> bool:
    """Whether a codec name means UTF-8 (``utf-8``, ``UTF8``, ``utf_8``...)."""
    return codecs.lookup(encoding).name == "utf-8"


class Undecodable(ValueError):
    """Bytes that are not valid in the encoding a file is read in.

    ``offset`` is the position of the first bad byte in the (decompressed) file, counted
    in bytes from 0; ``bad`` holds the bytes the codec rejected."""

    def __init__(self, encoding: str, offset: int, bad: bytes):
        self.encoding, self.offset, self.bad = encoding, offset, bad
        super().__init__(f"byte {bad[:1].hex().upper()!s} at offset {offset} is not valid {encoding}")


class _ArrowStream(io.RawIOBase):
    """A pyarrow input stream (decompressing) as a Python raw stream, for io.BufferedReader."""

    def __init__(self, stream):
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _ToUtf8(io.RawIOBase):
    """Reads ``source`` in ``encoding`` and yields UTF-8, strictly: a byte the codec
    rejects raises Undecodable with its offset in the source."""

    def __init__(self, source: BinaryIO, encoding: str):
        self.source, self.encoding = source, encoding
        self.decoder = codecs.getincrementaldecoder(encoding)("strict")
        self.fed = 0  # source bytes given to the decoder so far
        self.pending = b""
        self.done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending and not self.done:
            chunk = self.source.read(_CHUNK)
            self.done = not chunk
            held = len(self.decoder.getstate()[0])  # bytes of an unfinished character
            try:
                text = self.decoder.decode(chunk, final=self.done)
            except UnicodeDecodeError as error:
                raise Undecodable(self.encoding, self.fed - held + error.start,
                                  error.object[error.start:error.end]) from None
            self.fed += len(chunk)
            self.pending = text.encode("utf-8")
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def _decompressed(raw: BinaryIO, codec: str | None) -> BinaryIO:
    if codec is None:
        return raw
    import pyarrow as pa

    stream = pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), codec)
    return io.BufferedReader(_ArrowStream(stream), _CHUNK)


@contextlib.contextmanager
def open_input(uri: str, encoding: str | None = None) -> Iterator[BinaryIO]:
    """Open an input file for reading, decompressed by its suffix.

    ``encoding`` None: the bytes as stored (Parquet). Otherwise the file is text in that
    encoding (a UTF-16/32 byte-order mark overrides it) and the stream yields UTF-8;
    reading raises Undecodable at the first byte that is not valid in it."""
    from curate.core import storage  # the filesystems (and credentials) of the run

    fs, path = storage.fs_and_path(uri)
    with fs.open(path, "rb") as raw:
        stream = _decompressed(raw, split_compression(path)[1])
        if encoding is not None:
            if not isinstance(stream, io.BufferedReader):
                stream = io.BufferedReader(stream, _CHUNK)
            head = stream.peek(4)[:4]
            source = next((name for bom, name in _BOMS if head.startswith(bom)), None)
            if source is None and not is_utf8(encoding):
                source = encoding
            if source is not None:
                stream = io.BufferedReader(_ToUtf8(stream, source), _CHUNK)
        yield stream


@dataclass(frozen=True)
class FirstBadByte:
    offset: int  # in the decompressed file, from 0
    line: int  # from 1
    bad: bytes
    sample: bytes  # the bytes around it, for guessing the encoding


def first_invalid_utf8(uri: str) -> FirstBadByte | None:
    """Where the (decompressed) file first stops being UTF-8, or None if it is all UTF-8."""
    base, line, carry = 0, 1, b""
    with open_input(uri) as stream:
        while True:
            chunk = stream.read(_CHUNK)
            final = not chunk
            data = carry + chunk
            try:
                _, used = codecs.utf_8_decode(data, "strict", final)
            except UnicodeDecodeError as error:
                at = error.start
                sample = data[max(0, at - 4096): at + 4096]
                return FirstBadByte(base + at, line + data.count(b"\n", 0, at), data[at:error.end], sample)
            line += data.count(b"\n", 0, used)
            base, carry = base + used, data[used:]
            if final:
                return None


def guess_encoding(sample: bytes) -> list[str]:
    """Encodings the bytes look like, likeliest first; [] when nothing fits.

    charset_normalizer ranks them. On a short sample it ties or confuses encodings that
    read Western letters alike (cp1250 and cp1252 agree on é, ü, ß), so a common encoding
    (``_PREFERRED``) goes first when it ties with the best or reads the sample the same."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(sample))
    if not matches:
        return []
    best = matches[0]
    best_text = sample.decode(best.encoding, errors="replace")

    def as_good(name: str) -> bool:
        if any(m.encoding == name and (m.chaos, m.coherence) == (best.chaos, best.coherence) for m in matches):
            return True
        try:
            return sample.decode(name) == best_text
        except (UnicodeDecodeError, LookupError):
            return False

    preferred = [name for name in _PREFERRED if as_good(name)]
    return list(dict.fromkeys(preferred[:1] + [m.encoding for m in matches]))


def not_utf8_message(uri: str, encoding: str, offset: int, bad: bytes, line: int | None = None,
                     sample: bytes = b"") -> str:
    """The error for a text file that is not in ``encoding``: the file, the byte offset
    (and line, when known) of the first byte that is not, the encodings ``sample`` looks
    like, and what to set."""
    place = f"byte 0x{bad[:1].hex().upper()} at offset {offset}" + (f" (line {line})" if line else "")
    looks = [name for name in guess_encoding(sample) if name.replace("_", "-") != encoding] if sample else []
    if looks:
        also = f" (or {', '.join(looks[1:3])})" if len(looks) > 1 else ""
        hint = f"it looks like {looks[0]}{also}: set input.encoding: {looks[0]}"
    else:
        hint = "set input.encoding to the file's encoding"
    return f"input file {uri} is not {encoding}: {place} is not valid {encoding}; {hint}, or convert the file to UTF-8"
