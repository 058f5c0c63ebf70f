"""TensorBoard event files (`keras_rpat._tensorboard`, `callbacks.TensorBoardScalars`, `--tensorboard`).

The bytes are read back by a reader that shares no code with the writer:
TensorFlow's own on the tensorflow backend, and on torch (where TensorFlow must
not be loaded) the parser below, written from the TFRecord and protobuf specs.
"""

import math
import struct

import keras_rpat  # noqa: F401

import pytest
from testing import BACKEND
from testing import invoke

from keras_rpat import _tensorboard
from keras_rpat import callbacks
from keras_rpat import recipes
from keras_rpat.cli import launch as launch_lib
from keras_rpat.cli import main

SCALARS = {"loss/loss": 1.25, "eval/robust_acc": 0.375, "optimizer/learning_rate": 0.125}
SMOKE_TAGS = {
    "loss/loss",
    "loss/trades",
    "loss/rpat",
    "train/adv_acc",
    "train/clean_acc",
    "eval/clean_acc",
    "eval/robust_acc",
    "optimizer/learning_rate",
}


# --- An independent reader, from the specs --------------------------------------------------------------------------
# TFRecord: uint64 length, uint32 masked crc32c(length), data, uint32 masked crc32c(data), all little-endian.


def _spec_crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:  # bit by bit, Castagnoli polynomial 0x1EDC6F41 reflected
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _spec_mask(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def _read_varint(buf, i):
    shift = value = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _fields(buf):
    """`[(field number, value)]` of a protobuf message (varint, fixed64, length-delimited, fixed32)."""
    out, i = [], 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise AssertionError(f"wire type {wire}")
        out.append((field, value))
    return out


def _spec_events(path):
    """`[(wall_time, step, file_version or None, {tag: value})]`, checking both CRCs of every record."""
    data, i, events = open(path, "rb").read(), 0, []
    while i < len(data):
        header = data[i : i + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[i + 8 : i + 12])[0] == _spec_mask(_spec_crc32c(header))
        record = data[i + 12 : i + 12 + length]
        assert struct.unpack("<I", data[i + 12 + length : i + 16 + length])[0] == _spec_mask(_spec_crc32c(record))
        i += 16 + length
        wall_time, step, version, scalars = None, 0, None, {}
        for field, value in _fields(record):
            if field == 1:
                (wall_time,) = struct.unpack("<d", value)
            elif field == 2:
                step = value
            elif field == 3:
                version = value.decode()
            elif field == 5:
                for _, summary_value in _fields(value):
                    parts = dict(_fields(summary_value))
                    scalars[parts[1].decode()] = struct.unpack("<f", parts[2])[0]
        events.append((wall_time, step, version, scalars))
    return events


def _tf_events(path):
    import tensorflow as tf

    out = []
    for event in tf.compat.v1.train.summary_iterator(str(path)):
        scalars = {v.tag: v.simple_value for v in event.summary.value}
        out.append((event.wall_time, event.step, event.file_version or None, scalars))
    return out


def read_events(path):
    return _tf_events(path) if BACKEND == "tensorflow" else _spec_events(path)


def _event_file(folder):
    files = list(folder.glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    return files[0]


# --- Tests ----------------------------------------------------------------------------------------------------------


def test_crc32c_matches_the_castagnoli_check_value():
    assert _tensorboard.crc32c(b"123456789") == 0xE3069283 == _spec_crc32c(b"123456789")


def test_the_event_file_reads_back_with_an_independent_reader(tmp_path):
    writer = _tensorboard.EventFileWriter(tmp_path / "tb")
    writer.add_scalars(1, SCALARS, wall_time=1000.5)
    writer.add_scalars(2, {"loss/loss": float("nan"), "loss/big": 1e300}, wall_time=1001.5)
    writer.close()
    path = _event_file(tmp_path / "tb")
    assert path.name.startswith("events.out.tfevents.") and path.name.split(".")[3].isdigit()
    events = read_events(path)
    assert events[0][1:3] == (0, "brain.Event:2")
    assert [e[:2] for e in events[1:]] == [(1000.5, 1), (1001.5, 2)]
    assert events[1][3] == SCALARS  # all three are exact in float32
    assert math.isnan(events[2][3]["loss/loss"]) and events[2][3]["loss/big"] == math.inf


def test_keras_log_keys_get_grouped_tags():
    tags = [callbacks.tensorboard_tag(k) for k in ("loss", "rpat", "adv_acc", "val_robust_acc", "learning_rate")]
    assert tags == ["loss/loss", "loss/rpat", "train/adv_acc", "eval/robust_acc", "optimizer/learning_rate"]


@pytest.fixture(scope="module")
def smoke_train(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tb_train")
    args = ["train", "--method", "trades+rpat", "--dataset", "synthetic", "--smoke", "--epochs", 2]
    args += ["--eval-attacks", "clean", "--checkpoints", "final", "--out", tmp / "run", "--tensorboard", tmp / "tb"]
    result = invoke(main, [*args, "-q"])
    assert result.exit_code == 0, result.output
    return tmp


def test_train_writes_every_log_of_every_epoch(smoke_train):
    events = read_events(_event_file(smoke_train / "tb"))
    assert [e[1] for e in events] == [0, 1, 2]
    for _, _, _, scalars in events[1:]:
        assert set(scalars) == SMOKE_TAGS
        assert 0 <= scalars["eval/robust_acc"] <= scalars["eval/clean_acc"] <= 1
        assert scalars["optimizer/learning_rate"] > 0
    # The same numbers as the CSV log (float32 in the event file).
    rows = (smoke_train / "run" / "train_log.csv").read_text().splitlines()
    header, last = rows[0].split(","), dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert "val_robust_acc" in header
    assert events[-1][3]["eval/robust_acc"] == pytest.approx(float(last["val_robust_acc"]), rel=1e-6)
    assert events[-1][3]["loss/loss"] == pytest.approx(float(last["loss"]), rel=1e-6)


def test_tensorboard_is_not_part_of_the_run_configuration(smoke_train):
    args = ["train", "--method", "trades+rpat", "--dataset", "synthetic", "--smoke", "--epochs", 2]
    args += ["--eval-attacks", "clean", "--checkpoints", "final", "--out", smoke_train / "run"]
    result = invoke(main, args)
    assert result.exit_code == 0 and "already complete" in result.output, result.output


def test_an_unwritable_tensorboard_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("")
    args = ["train", "--method", "pgd_at", "--dataset", "synthetic", "--smoke", "--out", tmp_path / "r"]
    result = invoke(main, [*args, "--tensorboard", tmp_path / "file"])
    assert result.exit_code == 2 and "--tensorboard" in result.output and "file" in result.output, result.output


@pytest.mark.parametrize(
    "command, runner",
    [
        (["train", "--method", "pgd_at", "--dataset", "synthetic", "--smoke"], "run_single"),
        (["recipe", "figure4", "--smoke", "--method", "mse"], "run_recipe"),
    ],
)
@pytest.mark.parametrize("rank", [0, 1])
def test_under_data_parallel_only_rank_0_writes_tensorboard_scalars(command, runner, rank, tmp_path, monkeypatch):
    seen = {}

    def joined(out, sync_batchnorm, config, batch_size):
        return launch_lib.Launch(launch_lib.rank_folder(out, rank), rank, 2)

    def reached(*args, **kwargs):
        seen.update(kwargs)
        return {"results": [], "report": {"markdown": "", "json": "", "figures": []}}

    monkeypatch.setattr(launch_lib, "join", joined)
    monkeypatch.setattr(recipes, runner, reached)
    result = invoke(main, [*command, "--out", tmp_path / "run", "--tensorboard", tmp_path / "tb"])
    assert result.exit_code == 0, result.output
    assert seen["tensorboard_dir"] == (str(tmp_path / "tb") if rank == 0 else None)
