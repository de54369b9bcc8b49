"""load_run_metadata: task type and system prompt from run.json, without network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nim_async.config import NIMConfig
from nim_async.deploy.weights import RunMetadata, load_run_metadata, parse_run_json, prepare_weights

RUN = "run-meta"


def _vi_config(models_dir: Path, run_id: str = RUN) -> NIMConfig:
    return NIMConfig(
        nvidia_api_key="nvapi-test",
        secret_key="vi-sk-x",
        organization_id="org",
        run_id=run_id,
        model_save_path=models_dir,
        endpoint="http://127.0.0.1:9/",  # nothing listens: proves there is no network use
    )


def _store(models_dir: Path, run_json: object, *, where: str = "model_full") -> None:
    folder = models_dir / RUN / where if where else models_dir / RUN
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_bytes(
        run_json if isinstance(run_json, bytes) else json.dumps(run_json).encode()
    )


async def test_after_download(fake_vi, vi_config, kit):
    config = vi_config()
    assert load_run_metadata(config) is None  # not downloaded yet
    await prepare_weights(config, quiet=True)
    assert load_run_metadata(config) == RunMetadata(
        task_type="phrase-grounding", system_prompt="You find things in pictures."
    )


@pytest.mark.parametrize(
    ("kind", "task"),
    [
        ("PhraseGrounding", "phrase-grounding"),
        ("phrase_grounding", "phrase-grounding"),
        ("PHRASE-GROUNDING", "phrase-grounding"),
        ("Vqa", "vqa"),
        ("VQA", "vqa"),
        ("VisualQuestionAnswering", "vqa"),
        ("ObjectDetection", None),
    ],
)
def test_project_kind_mapping(tmp_path, kind, task):
    _store(tmp_path, {"flow": {"blocks": [{"type": "dataset", "settings": {"projectKind": kind}}]}})
    meta = load_run_metadata(_vi_config(tmp_path))
    if task is None:
        assert meta is None
    else:
        assert meta == RunMetadata(task_type=task, system_prompt=None)


@pytest.mark.parametrize(
    "document",
    [
        # blocks as a list under spec.flow
        {
            "spec": {
                "flow": {
                    "blocks": [
                        {"block": "dataset", "settings": {"projectKind": "Vqa"}},
                        {"block": "system-prompt", "settings": {"systemPrompt": "Be brief."}},
                    ]
                }
            }
        },
        # blocks keyed by id
        {
            "flow": {
                "blocks": {
                    "b1": {"kind": "dataset", "settings": {"projectKind": "Vqa"}},
                    "b2": {"kind": "systemPrompt", "settings": {"systemPrompt": "Be brief."}},
                }
            }
        },
        # several flows, extra nesting and unrelated settings around
        {
            "run": {"settings": {"epochs": 3}},
            "flows": [
                {
                    "blocks": [
                        {"settings": None},
                        {"settings": {"projectKind": "Vqa", "split": 0.8}},
                        {"settings": {"systemPrompt": "Be brief.", "other": [1, 2]}},
                    ]
                }
            ],
        },
    ],
)
def test_tolerates_shape_variations(tmp_path, document):
    _store(tmp_path, document)
    assert load_run_metadata(_vi_config(tmp_path)) == RunMetadata("vqa", "Be brief.")


def test_run_json_beside_model_full(tmp_path):
    _store(tmp_path, {"blocks": [{"settings": {"systemPrompt": "Hi."}}]}, where="")
    assert load_run_metadata(_vi_config(tmp_path)) == RunMetadata(None, "Hi.")


@pytest.mark.parametrize(
    "content",
    [b"{broken", b"[]", b"null", b'{"flow": {"blocks": [{"settings": {"systemPrompt": "  "}}]}}'],
)
def test_unusable_run_json_gives_none(tmp_path, content):
    _store(tmp_path, content)
    assert load_run_metadata(_vi_config(tmp_path)) is None


def test_absent_gives_none(tmp_path):
    assert load_run_metadata(_vi_config(tmp_path)) is None
    assert load_run_metadata(_vi_config(tmp_path, run_id="..")) is None
    assert load_run_metadata(NIMConfig(nvidia_api_key="nvapi-test")) is None


def test_local_model_path(tmp_path, kit):
    root = tmp_path / "ckpt"
    root.mkdir()
    (root / "run.json").write_text(json.dumps(kit.RUN_JSON))
    config = NIMConfig(nvidia_api_key="nvapi-test", model_path=root)
    assert load_run_metadata(config) == RunMetadata(
        "phrase-grounding", "You find things in pictures."
    )


def test_parse_run_json_directly():
    assert parse_run_json({"settings": {"projectKind": "PhraseGrounding"}}) == RunMetadata(
        "phrase-grounding", None
    )
    assert parse_run_json("text") is None
