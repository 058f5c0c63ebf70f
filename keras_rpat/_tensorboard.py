"""TensorBoard scalar event files, written without TensorFlow, tensorboard or protobuf.

An event file (`events.out.tfevents.<unix time>.<hostname>`) is a TFRecord
file: each record is

    uint64 length (little-endian) | uint32 masked CRC32C of those 8 bytes |
    the data | uint32 masked CRC32C of the data

(CRC32C is Castagnoli's CRC; masked = `((crc >> 15) | (crc << 17)) + 0xa282ead8`
mod 2**32). The data is a serialized `tensorflow.Event` (core/util/event.proto):
`wall_time` (field 1, double), `step` (2, int64), `file_version` (3, string,
"brain.Event:2" in the first record) or `summary` (5, a `Summary`: repeated
field 1 `Value` {`tag` 1 string, `simple_value` 2 float}; core/framework/summary.proto).

The file is append-only and flushed after every `add_scalars`, so a killed run
keeps every epoch written so far; a resumed run opens a new file in the same
folder (TensorBoard reads them all, in order).
"""

import math
import os
import socket
import struct
import time

__all__ = ["EventFileWriter", "crc32c", "masked_crc32c"]

FILE_VERSION = "brain.Event:2"


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    """CRC-32C (Castagnoli) of `data` (`crc32c(b"123456789") == 0xE3069283`)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    """The CRC that TFRecord stores: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data):
    """One TFRecord: length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _varint(value):
    """Protobuf base-128 varint of a non-negative int (an int64 below 0 takes its 64-bit two's complement)."""
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_delimited(field, payload):
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _float32(value):
    """`value` as a little-endian float32; beyond float32's range it is +-inf (struct would raise)."""
    try:
        return struct.pack("<f", value)
    except OverflowError:
        return struct.pack("<f", math.copysign(math.inf, value))


def event_bytes(wall_time, step, file_version=None, scalars=None):
    """A serialized `Event` with `file_version`, or with a `Summary` of `{tag: float}` scalars."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(int(step))
    if file_version is not None:
        return out + _length_delimited(3, file_version.encode())
    values = b"".join(
        _length_delimited(1, _length_delimited(1, tag.encode()) + _varint(2 << 3 | 5) + _float32(float(value)))
        for tag, value in scalars.items()
    )
    return out + _length_delimited(5, values)


class EventFileWriter:
    """Appends scalar summaries to a new event file in `log_dir` (created if missing).

    Args:
        log_dir: the folder TensorBoard is pointed at (one folder per run).
    """

    def __init__(self, log_dir):
        os.makedirs(log_dir, exist_ok=True)
        now = time.time()
        self.path = os.path.join(log_dir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}")
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across epochs, closed by close()
        if self._file.tell() == 0:  # a second writer within the same second appends to the same file
            self._file.write(tfrecord(event_bytes(now, 0, file_version=FILE_VERSION)))
            self._file.flush()

    def add_scalars(self, step, scalars, wall_time=None):
        """Writes `{tag: number}` at `step` in one event and flushes it to disk."""
        if self._file is None:
            raise ValueError(f"The event file {self.path} is closed; create a new EventFileWriter to write more.")
        if scalars:
            wall_time = time.time() if wall_time is None else wall_time
            self._file.write(tfrecord(event_bytes(wall_time, step, scalars=scalars)))
            self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
