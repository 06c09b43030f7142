"""Config: TOML + CLI overrides, one clear error naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import load_config
from lineside_common.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, 'device_id = "robot-1"\n[source]\nuri = "/tmp/rec"\n'))
    assert c.device_id == "robot-1" and c.source.uri == "/tmp/rec"
    assert c.telemetry.window_s == 5.0 and c.inference.intra_op_num_threads == 1
    assert not c.inference.allow_spinning
    assert c.broker.port == 1883 and c.client_id == "lineside-agent-robot-1"


def test_cli_overrides_win(tmp_path: Path) -> None:
    p = write(tmp_path, 'device_id = "robot-1"\n[source]\nuri = "/tmp/rec"\n')
    c = load_config(
        p,
        {"device_id": "robot-2", "broker.url": "mqtts://broker:8884", "state_dir": "/x", "source.uri": None},
    )
    assert c.device_id == "robot-2" and c.broker.port == 8884 and c.broker.use_tls
    assert c.state_dir == Path("/x") and c.source.uri == "/tmp/rec"


def test_provider_aliases(tmp_path: Path) -> None:
    p = write(tmp_path, 'device_id = "r"\n[source]\nuri = "0"\n[inference]\nproviders = ["cuda", "cpu"]\n')
    assert load_config(p).inference.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ('[source]\nuri = "x"\n', "device_id", "required"),
        ('device_id = "a b"\n[source]\nuri = "x"\n', "device_id", "letters"),
        ('device_id = "r"\n', "source", "required"),
        ('device_id = "r"\n[source]\nuri = "x"\n[broker]\nurl = "http://h"\n', "broker.url", "mqtt://"),
        ('device_id = "r"\n[source]\nuri = "x"\n[broker]\nurl = "mqtt://h:99999"\n', "broker.url", "port"),
        (
            'device_id = "r"\n[source]\nuri = "x"\n[telemetry]\nwindow_s = 0\n',
            "telemetry.window_s",
            "greater",
        ),
        (
            'device_id = "r"\n[source]\nuri = "x"\n[telemetry]\nwindow = 5\n',
            "telemetry.window",
            "not a known",
        ),
        (
            'device_id = "r"\n[source]\nuri = "x"\n[inference]\nproviders = ["warp"]\n',
            "inference.providers",
            "warp",
        ),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, text: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert err.value.field == field
    assert field in str(err.value) and words in str(err.value)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "device_id = \n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_shipped_example_config_is_valid() -> None:
    c = load_config(REPO / "deploy" / "agent.example.toml")
    assert c.device_id and c.broker.url
