"""Labels for samples (issue 17): import rows, the dataset hash, the labelling API (in process, on
SQLite and PostgreSQL), and `fleet samples label | import | export` against a real `fleet serve`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from fleet_server.labels import LabelError, LabelRow, dataset_hash, parse_rows
from tests.test_samples_store import ADMIN, _bearer, body, client, device_token, jpeg, meta, put

__all__ = ["client"]  # the in-process app fixture, shared with the sample store's tests


def test_import_rows_csv_and_jsonl() -> None:
    csv_text = "id,label\n3,circle-80\n4, square-80 \n"
    assert parse_rows(csv_text, "csv") == [LabelRow("circle-80", id=3), LabelRow("square-80", id=4)]
    jsonl = '{"device_id": "r1", "sample_id": "000001-000000000001", "label": "new-box"}\n\n'
    assert parse_rows(jsonl, "jsonl") == [
        LabelRow("new-box", device_id="r1", sample_id="000001-000000000001")
    ]


@pytest.mark.parametrize(
    ("text", "fmt", "line"),
    [
        ("id,label\n3,circle-80\nx,circle-80\n", "csv", "line 3"),
        ("id,label\n3,circle-80\n4,\n", "csv", "line 3"),
        ("id,label\n3,circle-80,extra\n", "csv", "line 2"),
        ("id,name\n3,circle-80\n", "csv", "line 1"),
        ("id,label\n3,../etc\n", "csv", "line 2"),
        ('{"id": 3, "label": "a"}\n{"label": "b"}\n', "jsonl", "line 2"),
        ('{"id": 3, "label": "a"}\nnot json\n', "jsonl", "line 2"),
        ("", "jsonl", None),
    ],
)
def test_a_malformed_import_row_is_refused_naming_its_line(text: str, fmt: Any, line: str | None) -> None:
    with pytest.raises(LabelError) as err:
        parse_rows(text, fmt)
    assert err.value.reason == "malformed"
    if line is not None:
        assert str(err.value).startswith(line)


def test_dataset_hash_is_over_images_and_labels_only() -> None:
    pairs = [("aa" * 32, "circle-80"), ("bb" * 32, "square-80")]
    assert dataset_hash(pairs) == dataset_hash(reversed(pairs)) == dataset_hash([*pairs, pairs[0]])
    assert dataset_hash(pairs) != dataset_hash([("aa" * 32, "square-80"), ("bb" * 32, "square-80")])


def _upload(client: TestClient, n: int) -> list[int]:
    token = device_token(client, "robot-1")
    ids = []
    for i in range(n):
        sid = f"000001-{i:012d}"
        r = put(client, token, "robot-1", sid, body(meta("robot-1", sid), jpeg(i)))
        assert r.status_code == 201, r.text
        ids.append(r.json()["sample"]["id"])
    return ids


def _labelled(client: TestClient) -> list[Any]:
    r = client.get("/api/v1/samples", params={"labelled": "true"}, headers=_bearer(ADMIN))
    return [(s["id"], s["true_label"]) for s in r.json()["samples"]]


def test_labels_through_the_api_all_or_nothing(client: TestClient) -> None:
    ids = _upload(client, 3)
    post = lambda token, b: client.post("/api/v1/samples/labels", json=b, headers=_bearer(token))  # noqa: E731

    # A robot's token cannot label.
    robot = device_token(client, "robot-2")
    assert post(robot, {"labels": [{"id": ids[0], "label": "box"}]}).status_code == 403
    # An unknown label is refused unless declared new; an unknown sample refuses the whole import.
    r = post(ADMIN, {"labels": [{"id": ids[0], "label": "crate"}]})
    assert r.status_code == 422 and r.json()["reason"] == "unknown_label"
    r = post(
        ADMIN,
        {"labels": [{"id": ids[0], "label": "crate"}, {"id": 99999, "label": "crate"}], "new_labels": True},
    )
    assert r.status_code == 404 and r.json()["reason"] == "unknown_sample"
    r = post(ADMIN, {"labels": [{"label": "crate"}], "new_labels": True})
    assert r.status_code == 422 and r.json()["reason"] == "malformed"
    assert _labelled(client) == []

    r = post(ADMIN, {"labels": [{"id": ids[0], "label": "crate"}], "new_labels": True})
    assert r.status_code == 200 and r.json()["samples"][0]["labelled_by"] == "admin"
    # Once a sample has it, the label is known; by (device, sample id) as an import names them.
    r = post(
        ADMIN, {"labels": [{"device_id": "robot-1", "sample_id": "000001-000000000001", "label": "crate"}]}
    )
    assert r.status_code == 200
    assert sorted(_labelled(client)) == [(ids[0], "crate"), (ids[1], "crate")]
    known = client.get("/api/v1/samples/labels/known", headers=_bearer(ADMIN)).json()
    assert known == ["crate"]


@pytest.mark.integration
def test_cli_label_import_and_export_twice_give_the_same_hash(tmp_path: Path, mosquitto: Any) -> None:
    from tests.fleet_support import FleetServer, make_keys

    server = FleetServer(tmp_path, mosquitto.url, make_keys(tmp_path)).start()
    try:
        token = server.cli("devices", "token", "robot-1").stdout.strip()
        for i in range(4):
            sid = f"000001-{i:012d}"
            r = httpx.put(
                f"{server.url}/api/v1/devices/robot-1/samples/{sid}",
                content=body(meta("robot-1", sid), jpeg(i)),
                headers={**_bearer(token), "Content-Type": "application/x-lineside-sample"},
                timeout=10,
            )
            assert r.status_code == 201, r.text
        listed = server.cli_json("samples", "list")["samples"]
        ids = sorted(s["id"] for s in listed)

        server.cli("samples", "label", str(ids[0]), "circle-80", "--new-label")
        bad = server.cli("samples", "label", str(ids[1]), "hexagon", check=False)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        csv_file = tmp_path / "labels.csv"
        csv_file.write_text(f"id,label\n{ids[1]},circle-80\n{ids[2]},square-80\n")
        malformed = tmp_path / "bad.csv"
        malformed.write_text(f"id,label\n{ids[3]},square-80\nnot-a-number,square-80\n")
        out = server.cli("samples", "import", str(malformed), "--new-labels", "--json", check=False)
        assert out.returncode != 0 and json.loads(out.stdout)["error"]
        # Nothing of the malformed file was stored: still only the one labelled by hand.
        labelled = [s["id"] for s in server.cli_json("samples", "list")["samples"] if s["true_label"]]
        assert labelled == [ids[0]]
        server.cli("samples", "import", str(csv_file), "--new-labels")

        hashes = []
        for n in (1, 2):
            out_dir = tmp_path / f"export-{n}"
            info = server.cli_json("samples", "export", "--labelled", "--out", str(out_dir))
            hashes.append(info["dataset_sha256"])
            assert info["samples"] == 3
            assert sorted(p.name for p in out_dir.iterdir() if p.is_dir()) == ["circle-80", "square-80"]
            assert len(list((out_dir / "circle-80").glob("*.jpg"))) == 2
            rows = [json.loads(x) for x in (out_dir / "samples.jsonl").read_text().splitlines()]
            assert sorted(r["id"] for r in rows) == ids[:3]
            pairs = [(r["image_sha256"], r["true_label"]) for r in rows]
            assert info["dataset_sha256"] == dataset_hash(pairs)
        assert hashes[0] == hashes[1]
        # Into a folder that is not empty: refused, nothing overwritten.
        again = server.cli(
            "samples", "export", "--labelled", "--out", str(tmp_path / "export-1"), check=False
        )
        assert again.returncode != 0
    finally:
        server.stop()
