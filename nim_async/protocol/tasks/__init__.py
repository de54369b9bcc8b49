"""Task types and their registry.

A new task joins by subclassing :class:`Task` in one module and registering an instance here
(or from user code with :func:`register_task`).
"""

from __future__ import annotations

from nim_async.protocol.tasks.base import ParseContext, Task
from nim_async.protocol.tasks.freeform import FreeformTask
from nim_async.protocol.tasks.generic import GenericTask
from nim_async.protocol.tasks.phrase_grounding import PhraseGroundingTask
from nim_async.protocol.tasks.video_freeform import VideoFreeformTask
from nim_async.protocol.tasks.vqa import VQATask

__all__ = [
    "TASKS",
    "ParseContext",
    "Task",
    "get_task",
    "register_task",
    "task_for_key",
    "task_for_media",
]

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> None:
    """Make ``task`` available under ``task.name``.

    Args:
        task: The task instance.

    Raises:
        ValueError: if another task already uses that name.
    """
    if task.name in TASKS and TASKS[task.name] is not task:
        raise ValueError(f"a task named {task.name!r} is already registered")
    TASKS[task.name] = task


def get_task(name: str) -> Task:
    """Return the task registered as ``name`` (underscores are read as dashes).

    Raises:
        ValueError: naming the known task types when ``name`` is not one.
    """
    task = TASKS.get(name) or TASKS.get(name.replace("_", "-"))
    if task is None:
        known = ", ".join(repr(n) for n in sorted(TASKS))
        raise ValueError(f"unknown task_type {name!r}; use one of {known}")
    return task


def task_for_key(key: str) -> Task | None:
    """Return the first registered task whose output JSON has top-level ``key``, or ``None``.

    ``freeform`` and ``video-freeform`` share the key ``"freeform"``; the image task, registered
    first, is returned.
    """
    for task in TASKS.values():
        if task.key == key:
            return task
    return None


def task_for_media(task: Task, kind: str) -> Task:
    """Return the task a request carrying media of ``kind`` is sent with.

    ``freeform`` and ``generic`` send a video as ``video-freeform`` (vi-sdk's rule); any other
    task keeps itself when it accepts ``kind``.

    Args:
        task: The predictor's task.
        kind: ``"image"`` or ``"video"``.

    Raises:
        ValueError: when ``task`` does not take that kind of media, saying why and what to use.
    """
    if kind == "video" and task.video_task is not None:
        task = get_task(task.video_task)
    if kind not in task.accepts:
        why = task.refusal.get(kind, f"it takes {' or '.join(sorted(task.accepts))} sources")
        article = "an" if kind[0] in "aeiou" else "a"
        raise ValueError(f"the {task.name} task does not take {article} {kind}: {why}")
    return task


register_task(PhraseGroundingTask())
register_task(VQATask())
register_task(FreeformTask())
register_task(GenericTask())
register_task(VideoFreeformTask())
