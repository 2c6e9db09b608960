"""The HTTP app: OpenAI-compatible chat completions and a predict route (owned by the serving work)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ServeConfig:
    """Settings of `schemabuild serve` (each field is a CLI flag)."""

    host: str = "127.0.0.1"
    """Address to bind (loopback by default)."""
    port: int = 8000
    """Port to listen on."""


def run_server(tasks, cfg: ServeConfig, runs_dir=None):
    raise NotImplementedError("serving is being written")
