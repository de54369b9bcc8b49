"""The emulator's answer to a validated request: its text, cut into tokens, and why it ends.

A test double's answer, never a model's. No IO.
"""

from __future__ import annotations

import itertools
import random
import uuid
from dataclasses import dataclass

from nim_async.emulator import guided
from nim_async.emulator.constraints import Constraint
from nim_async.emulator.grammar import grammar_output
from nim_async.emulator.rejection import bad
from nim_async.emulator.responder import (
    answer_vqa,
    detect_task,
    freeform_output,
    grounding_output,
    render_json,
    vqa_output,
)
from nim_async.emulator.scene import Scene
from nim_async.emulator.settings import EmulatorSettings
from nim_async.emulator.tokens import split_tokens
from nim_async.emulator.validation import ChatRequest
from nim_async.emulator.video import VideoInfo

__all__ = ["Job", "answer_text", "build_job"]

_FILLER = tuple(split_tokens(" The emulator keeps writing filler text past the answer."))


@dataclass(slots=True)
class Job:
    """A request ready to be generated.

    Attributes:
        request_id: ``chatcmpl-...`` id.
        stream: Stream as SSE.
        include_usage: Send a final usage chunk.
        continuous_usage: Usage on every chunk.
        prompt_tokens: Prompt tokens (text and images).
        pieces: The output tokens.
        finish_reason: ``stop`` or ``length``.
        stop_reason: The stop string that ended the output, if any.
    """

    request_id: str
    stream: bool
    include_usage: bool
    continuous_usage: bool
    prompt_tokens: int
    pieces: list[str]
    finish_reason: str
    stop_reason: str | None


def build_job(
    req: ChatRequest,
    scenes: list[Scene],
    settings: EmulatorSettings,
    *,
    prompt_tokens: int,
    limit: int,
    videos: list[VideoInfo] | None = None,
) -> Job:
    """Answer ``req`` and apply ``stop``, ``min_tokens``, ``ignore_eos`` and the output limit.

    Args:
        req: The validated request.
        scenes: Scenes of its images, in order.
        settings: Box format, pixel budget, reasoning prefix.
        prompt_tokens: Prompt tokens, images and videos included.
        limit: Output token limit (``max_tokens`` or the room left in the context).
        videos: Header facts of its videos, in order.

    Raises:
        RequestError: 400 when a constraint cannot be satisfied.
    """
    rng = random.Random(req.seed) if req.seed is not None and req.temperature > 0 else None
    video = videos[0] if videos else None
    text = answer_text(req, scenes[0] if scenes else None, settings, rng, video)
    stop_reason: str | None = None
    if req.stops:
        min_chars = len("".join(split_tokens(text)[: req.min_tokens])) if req.min_tokens else 0
        best = -1
        for stop in req.stops:
            at = text.find(stop, min_chars)
            if at != -1 and (best == -1 or at < best):
                best, stop_reason = at, stop
        if best != -1 and stop_reason is not None:
            text = text[: best + (len(stop_reason) if req.include_stop else 0)]
    pieces = split_tokens(text)
    want = limit if req.ignore_eos and stop_reason is None else req.min_tokens
    if len(pieces) < want:
        pieces.extend(itertools.islice(itertools.cycle(_FILLER), want - len(pieces)))
    finish = "stop"
    if len(pieces) > limit or (req.ignore_eos and stop_reason is None):
        del pieces[limit:]
        finish, stop_reason = "length", None
    return Job(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        stream=req.stream,
        include_usage=req.include_usage,
        continuous_usage=req.continuous_usage,
        prompt_tokens=prompt_tokens,
        pieces=pieces,
        finish_reason=finish,
        stop_reason=stop_reason,
    )


def _natural(
    req: ChatRequest,
    constraint: Constraint | None,
    scene: Scene | None,
    settings: EmulatorSettings,
    rng: random.Random | None,
    video: VideoInfo | None = None,
) -> tuple[str, str]:
    """The unconstrained answer as ``(json_text, short_answer)``."""
    schema_key = None
    if constraint is not None and constraint[0] == "json":
        schema_key = guided.schema_task_key(constraint[1])
    texts = "\n".join(req.system_texts + req.user_texts)
    task = detect_task(schema_key, texts, system=bool(req.system_texts))
    question = req.user_texts[-1] if req.user_texts else ""
    if task == "generic" and constraint is not None and constraint[0] == "json_object":
        task = "vqa"  # JSON was asked for: the VQA object, as before
    if task == "phrase_grounding":
        prompt = "\n".join(req.user_texts)
        obj = grounding_output(
            scene,
            prompt,
            settings.box_convention,
            settings.pixel_budget,
            rng,
            settings.vision_family,
        )
        return render_json(obj), obj["phrase_grounding"]["sentence"]
    if task == "vqa":
        obj = vqa_output(scene, question, rng)
        return render_json(obj), obj["vqa"]["answer"]
    if task == "freeform":
        obj = freeform_output(scene, video, rng)
        return render_json(obj), obj["freeform"]["caption"]
    if task == "generic":
        text = answer_vqa(scene, question, rng)
        return text, text
    try:
        text = render_json(guided.schema_instance(constraint[1] if constraint else {}, rng))
    except guided.GuidedError as exc:
        raise bad(str(exc), "guided_json") from None
    return text, text


def answer_text(
    req: ChatRequest,
    scene: Scene | None,
    settings: EmulatorSettings,
    rng: random.Random | None,
    video: VideoInfo | None = None,
) -> str:
    """The whole answer text of ``req`` (constraint applied, reasoning prefix added).

    Args:
        req: The validated request.
        scene: Scene of its first image, if any.
        settings: Box format, pixel budget, reasoning prefix.
        rng: Sampling randomness (``None``: greedy).
        video: Header facts of its first video, if any.

    Raises:
        RequestError: 400 when a constraint cannot be satisfied.
    """
    constraint = req.constraint
    natural, answer = _natural(req, constraint, scene, settings, rng, video)
    if constraint is None or constraint[0] in ("json", "json_object"):
        text = natural
    elif constraint[0] == "choice":
        text = guided.choose(constraint[1], [answer, natural], rng)
    elif constraint[0] == "grammar":
        text = grammar_output(constraint[1]) or ""
    else:  # regex
        try:
            text = guided.regex_output(constraint[1], [answer, natural], rng)
        except guided.GuidedError as exc:
            raise bad(str(exc), "guided_regex") from None
    if settings.reasoning:
        n_regions = len(scene.regions) if scene is not None else 0
        text = (
            "<think>\nThe emulator scans the image for solid colour regions and finds "
            f"{n_regions}. It answers from those regions.\n</think>\n\n" + text
        )
    return text
