"""The small pieces users meet directly: input columns and ids, IMAGE cells, shard specs,
progress lines, and the float32 round trip through JSON."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from batch_helpers import write_csv, write_jsonl

from batch.images import LocalFile, classify_image
from batch.output import CorruptOutput, RecordWriter, dump_record, recover, vector_to_json
from batch.progress import LogProgress
from batch.reader import Columns, InputError, read_rows
from batch.sharding import Shard, find_parts, parse_shard, part_path, shard_from_env


def test_csv_and_jsonl_give_the_same_rows_with_aliases(tmp_path):
    rows = [{"id": "a", "caption": "x", "url": "http://h/1.jpg"}, {"id": "b", "caption": "", "url": "http://h/2.jpg"}]
    for path in (write_csv(tmp_path / "r.csv", rows), write_jsonl(tmp_path / "r.jsonl", rows)):
        got = list(read_rows(path))
        assert [(r.position, r.id, r.text, r.image) for r in got] == [
            (0, "a", "x", "http://h/1.jpg"),
            (1, "b", None, "http://h/2.jpg"),
        ]


def test_explicit_columns_and_row_numbers_when_there_is_no_id(tmp_path):
    src = write_csv(tmp_path / "r.csv", [{"key": "k1", "prompt": "p", "file": "f.png"}] * 2)
    assert [r.id for r in read_rows(src)] == ["0", "1"]
    rows = list(
        read_rows(
            write_csv(
                tmp_path / "s.csv",
                [{"key": "k1", "prompt": "p", "file": "f.png"}, {"key": "k2", "prompt": "q", "file": "g.png"}],
            ),
            Columns(id="key", text="prompt", image="file"),
        )
    )
    assert [(r.id, r.text, r.image) for r in rows] == [("k1", "p", "f.png"), ("k2", "q", "g.png")]


def test_duplicate_or_missing_ids_are_refused(tmp_path):
    with pytest.raises(InputError, match="duplicate id 'a' at row 1"):
        list(read_rows(write_csv(tmp_path / "d.csv", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])))
    with pytest.raises(InputError, match="row 1 has no 'id'"):
        list(read_rows(write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "text": "x"}, {"text": "y"}])))
    with pytest.raises(InputError, match="unknown input format"):
        list(read_rows(tmp_path / "x.parquet"))


def test_image_cells_are_told_apart(tmp_path):
    (tmp_path / "cat.jpg").write_bytes(b"x")
    b64 = base64.b64encode(b"\x89PNG some bytes").decode()
    assert classify_image("https://example.com/a.jpg") == "https://example.com/a.jpg"
    assert classify_image("data:image/png;base64,AAAA") == "data:image/png;base64,AAAA"
    assert classify_image(b64) == b64
    assert classify_image("cat.jpg", [tmp_path]) == LocalFile(tmp_path / "cat.jpg")
    assert classify_image(str(tmp_path / "cat.jpg")) == LocalFile(tmp_path / "cat.jpg")
    assert classify_image(f"file://{tmp_path}/cat.jpg") == LocalFile(tmp_path / "cat.jpg")
    assert classify_image("missing/dog.jpg", [tmp_path]) == LocalFile(Path("missing/dog.jpg"))


def test_shard_specs_from_flag_and_cloud_run_env():
    assert parse_shard("2/5") == Shard(2, 5)
    with pytest.raises(ValueError):
        parse_shard("5/5")
    with pytest.raises(ValueError):
        parse_shard("two of five")
    assert shard_from_env({"CLOUD_RUN_TASK_INDEX": "3", "CLOUD_RUN_TASK_COUNT": "4"}) == Shard(3, 4)
    assert shard_from_env({}) is None
    with pytest.raises(ValueError, match="CLOUD_RUN_TASK_INDEX"):
        shard_from_env({"CLOUD_RUN_TASK_INDEX": "x", "CLOUD_RUN_TASK_COUNT": "4"})
    assert part_path(Path("/o/emb.npy"), Shard(3, 12)) == Path("/o/emb.shard-00003-of-00012.jsonl")


def test_find_parts_ignores_other_outputs_and_other_counts(tmp_path):
    for name in ("emb.shard-00000-of-00002.jsonl", "emb.shard-00001-of-00002.jsonl", "emb2.shard-00000-of-00001.jsonl"):
        (tmp_path / name).write_text("")
    assert [p.name for p in find_parts(tmp_path / "emb.jsonl")] == [
        "emb.shard-00000-of-00002.jsonl",
        "emb.shard-00001-of-00002.jsonl",
    ]
    (tmp_path / "emb.shard-00000-of-00003.jsonl").write_text("")
    with pytest.raises(ValueError, match="different shard counts"):
        find_parts(tmp_path / "emb.jsonl")


def test_float32_vectors_survive_json_exactly_and_compactly():
    rng = np.random.default_rng(0)
    v = rng.standard_normal(512).astype(np.float32) / 7
    line = dump_record({"id": "x", "v": vector_to_json(v)})
    back = np.asarray(json.loads(line)["v"], dtype=np.float32)
    np.testing.assert_array_equal(back, v)
    assert len(line) < 512 * 13  # float64 repr would need about 20 characters per value


def test_recover_keeps_whole_records_and_refuses_a_corrupt_middle(tmp_path):
    path = tmp_path / "p.jsonl"
    with RecordWriter(path) as w:
        w.write([{"id": "a", "error": None}, {"id": "b", "error": {"code": "invalid_image", "message": ""}}])
    with path.open("ab") as f:
        f.write(b'{"id": "c", "text_emb')
    state = recover(path)
    assert state.done == {"a", "b"} and dict(state.errors) == {"invalid_image": 1}
    assert path.read_bytes().endswith(b"}\n") and path.read_bytes().count(b"\n") == 2
    path.write_bytes(b'{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(CorruptOutput):
        recover(path)


def test_progress_lines_when_not_a_terminal(caplog):
    now = [0.0]
    progress = LogProgress(total=100, desc="embed", interval_s=30, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="batch.progress"):
        progress.update(10, 0)
        assert caplog.records == []  # not before the interval
        now[0] = 31.0
        progress.update(21, 2)
        now[0] = 40.0
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "embed: 31/100 rows (31.0%), 1.0 rows/s, ETA 1m09s, 2 errors"
    assert lines[1].startswith("embed: 31/100 rows")


def test_a_terminal_gets_a_bar_with_rate_and_errors():
    import io

    from batch.progress import make_progress

    class Terminal(io.StringIO):  # a terminal that reports no size, as some CI ptys do
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = make_progress(5, "embed", stream=stream)
    progress.update(3, 0)
    progress.update(2, 1)
    progress.close()
    final = stream.getvalue().split("\r")[-1]
    assert final.startswith("embed: 100%") and "5/5" in final and "row/s" in final and "errors=1" in final
