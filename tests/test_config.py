"""Config loading: documented defaults, overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardmq.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_documented_config_file_equals_the_defaults() -> None:
    assert load_config(ROOT / "config" / "shardmq.toml") == load_config()


def test_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[server]\nport = 6000\nhost = "127.0.0.1"\n')
    cfg = load_config(f, port=7000, host=None)
    assert cfg.server.port == 7000 and cfg.server.host == "127.0.0.1"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[server]\nport = 70000\n", "port"),
        ("[amqp]\nframe_max = 100\n", "frame_max"),
        ("[server]\nbogus = 1\n", "bogus"),
        ("[server]\nlog_level = 'loud'\n", "log_level"),
        ("[server]\nallocator = 'jemalloc'\n", "allocator"),
        ("[server\n", "invalid TOML"),
    ],
)
def test_bad_values_name_the_setting(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert needle in str(info.value) and str(f) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
