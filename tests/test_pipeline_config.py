"""PIPELINE.toml: validation, paths relative to the file, the serving default, and the CLI's token check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lineside_common.cli import CommandError
from models.cli import main
from models.pipeline_config import load_pipeline_config

BASE = """
[pipeline]
version = "2.1.0"
base_config = "base.toml"
[data]
datasets = ["field", "/abs/other"]
heldout = "heldout"
[train]
init_from = "serving"
epochs = 2
"""


def _write(tmp: Path, text: str) -> Path:
    (tmp / "serving").mkdir(exist_ok=True)
    path = tmp / "PIPELINE.toml"
    path.write_text(text)
    return path


def test_paths_are_relative_to_the_file_and_serving_defaults_to_init_from(tmp_path: Path) -> None:
    c = load_pipeline_config(_write(tmp_path, BASE))
    assert c.pipeline.base_config == str(tmp_path / "base.toml")
    assert c.data.datasets == [str(tmp_path / "field"), "/abs/other"]
    assert c.data.heldout == str(tmp_path / "heldout")
    assert c.train == {"init_from": str(tmp_path / "serving"), "epochs": 2}
    assert c.pipeline.serving == str(tmp_path / "serving")
    assert c.data.render_share == 0.3 and c.release is None and c.rollout.start is False
    assert c.gate.policy().min_discordant == 10


def _refused(path: Path) -> CommandError:
    with pytest.raises(CommandError) as err:
        load_pipeline_config(path)
    assert err.value.reason == "config"
    return err.value


def test_bad_configs_name_the_field(tmp_path: Path) -> None:
    assert "data.render_share" in str(
        _refused(_write(tmp_path, BASE.replace("[data]", "[data]\nrender_share = 1.0")))
    )
    assert "gate.alpha" in str(_refused(_write(tmp_path, BASE + "[gate]\nalpha = 0\n")))
    assert "rollout" in str(
        _refused(_write(tmp_path, BASE + "[rollout]\nstart = true\n"))
    )  # no group/devices
    no_serving = BASE.replace('init_from = "serving"', 'init_from = "ckpt.pt"')
    assert "pipeline.serving" in str(_refused(_write(tmp_path, no_serving)))
    _refused(tmp_path / "missing.toml")


def test_rollout_options_are_what_fleet_rollout_start_sends(tmp_path: Path) -> None:
    c = load_pipeline_config(
        _write(
            tmp_path,
            BASE
            + '[rollout]\nstart = true\ngroup = "line-3"\nstages = "1,100%"\nshadow = "25%"\nshadow_soak_s = 60\n',
        )
    )
    opts = {k: v for k, v in c.rollout.options().items() if v is not None}
    assert opts == {"group": "line-3", "stages": "1,100%", "shadow": "25%", "shadow_soak": "60s"}


def test_a_release_without_a_token_is_one_line_and_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    config = _write(
        tmp_path,
        BASE + '[release]\nserver = "http://127.0.0.1:9"\nkeys = "keys"\ntoken_env = "NO_SUCH_TOKEN_VAR"\n',
    )
    code = main(["pipeline", "--config", str(config), "--workdir", str(tmp_path / "w"), "--json"])
    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(captured.out) == {
        "ok": False,
        "error": "[release] needs an admin API token in $NO_SUCH_TOKEN_VAR",
        "reason": "no_token",
    }
    assert captured.err.count("\n") == 1 and "NO_SUCH_TOKEN_VAR" in captured.err
    assert not (tmp_path / "w").exists()
