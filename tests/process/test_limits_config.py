"""The flow and limit settings of issue 16 load and validate like every other setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardmq.config import ConfigError, load_config, parse_size
from workers.lifecycle import memory_limit


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (4096, 4096), ("512MiB", 512 << 20), ("2GB", 2 * 10**9), ("1.5 GiB", 3 << 29)],
)
def test_sizes(value: int | str, expected: int) -> None:
    assert parse_size(value) == expected


def test_absolute_watermark_wins(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nmemory_high_watermark_absolute = "300MiB"\nmax_connections = 5\n')
    config = load_config(cfg)
    server = config.server
    assert memory_limit(server.memory_high_watermark, server.memory_limit_absolute) == 300 << 20
    assert config.server.max_connections == 5
    assert memory_limit(load_config().server.memory_high_watermark) > 0  # fraction of RAM


@pytest.mark.parametrize("bad", ['"lots"', '"12 parsecs"', "-1"])
def test_bad_absolute_watermark_names_the_setting(tmp_path: Path, bad: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[server]\nmemory_high_watermark_absolute = {bad}\n")
    with pytest.raises(ConfigError, match="memory_high_watermark_absolute|size"):
        load_config(cfg)
