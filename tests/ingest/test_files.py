import json
from pathlib import Path

import pytest

from otelbridge.ingest.files import InputFileError, RecordKind, read_records

CALL = {"id": "ac_1", "agent_id": "a", "status": "completed"}
EVENT = {"type": "call_turn", "call_id": "ac_1", "turn": {"role": "user", "start_timestamp": 1}}


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("content", "fmt", "labels", "kinds"),
    [
        (
            json.dumps({"data": [CALL, CALL], "next_page": None}),
            "List Calls response",
            ["data[0]", "data[1]"],
            [RecordKind.CALL] * 2,
        ),
        (json.dumps(CALL), "Get Call object", ["the call"], [RecordKind.CALL]),
        (
            json.dumps([CALL, EVENT]),
            "JSON array",
            ["record 0", "record 1"],
            [RecordKind.CALL, RecordKind.WEBHOOK],
        ),
        (json.dumps(EVENT), "webhook event", ["the event"], [RecordKind.WEBHOOK]),
        (
            json.dumps(EVENT) + "\n\n" + json.dumps(EVENT) + "\n",
            "webhook stream (JSON lines)",
            ["line 1", "line 3"],
            [RecordKind.WEBHOOK] * 2,
        ),
    ],
)
def test_detects_the_shape(
    tmp_path: Path, content: str, fmt: str, labels: list[str], kinds: list[RecordKind]
) -> None:
    detected, records = read_records(_write(tmp_path, "input.txt", content))
    records_list = list(records)
    assert detected == fmt
    assert [r.label for r in records_list] == labels
    assert [r.kind for r in records_list] == kinds
    assert all(r.error is None for r in records_list)


def test_a_broken_line_is_one_bad_record(tmp_path: Path) -> None:
    _, records = read_records(_write(tmp_path, "s.jsonl", json.dumps(EVENT) + "\n{nope\n"))
    good, bad = list(records)
    assert good.error is None
    assert bad.label == "line 2" and bad.error is not None and bad.error.startswith("not JSON")


def test_lone_surrogates_are_not_json(tmp_path: Path) -> None:
    _, records = read_records(_write(tmp_path, "s.jsonl", '{"type": "x", "t": "\\ud800"}\n{"type": "y"}\n'))
    assert [r.error is not None for r in records] == [True, False]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "the file is empty"),
        ("{not json", "not JSON"),
        ('{"hello": 1}', "a JSON object of unknown shape"),
        ("42", "JSON int at top level"),
    ],
)
def test_file_level_problems(tmp_path: Path, content: str, problem: str) -> None:
    with pytest.raises(InputFileError, match=problem):
        read_records(_write(tmp_path, "f.json", content))


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        read_records(tmp_path / "absent.json")
    with pytest.raises(InputFileError, match="is a directory"):
        read_records(tmp_path)


def test_call_hint_for_messages(tmp_path: Path) -> None:
    _, records = read_records(
        _write(
            tmp_path,
            "f.json",
            json.dumps(
                [
                    CALL,
                    {"type": "call_completed", "request_id": "MZ1"},
                    {"type": "x", "call": {"id": "ac_9"}},
                    3,
                ]
            ),
        )
    )
    assert [r.call_hint for r in records] == ["ac_1", "MZ1", "ac_9", None]
