"""The emulator picks cosmos-reason2's box convention from the catalog (0-1000)."""

from __future__ import annotations

import argparse

import pytest

from nim_async.emulator.cli import add_arguments, build_settings


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("cosmos-reason2-2b", "norm1000"),
        ("cosmos-reason2-8b", "norm1000"),
        ("cosmos-reason1-7b", "qwen25-abs"),
    ],
)
def test_emulate_served_name_picks_the_catalog_box_format(
    name: str, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("NIM_SERVED_MODEL_NAME", "NIM_MODEL_NAME", "NIM_SERVER_PORT"):
        monkeypatch.delenv(var, raising=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings, _, _ = build_settings(parser.parse_args(["--served-model-name", name, "--port", "0"]))
    assert settings.served_model_name == name
    assert settings.box_format == fmt
