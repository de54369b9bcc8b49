"""The CLI's literal choice lists stay in step with the library (the parser imports neither)."""

from __future__ import annotations

from nim_async.cli.parser import DIALECT_CHOICES, TASK_CHOICES, build_parser
from nim_async.protocol.tasks import TASKS
from nim_async.protocol.wire import DIALECTS


def test_dialects_are_the_wire_formats_and_auto_is_the_default() -> None:
    assert set(DIALECT_CHOICES) == set(DIALECTS)
    args = build_parser().parse_args(["predict", "x.jpg"])
    assert args.dialect == "auto"


def test_tasks_are_the_registered_image_tasks() -> None:
    image_tasks = {name for name, task in TASKS.items() if task.media == "image"}
    assert set(TASK_CHOICES) == image_tasks
