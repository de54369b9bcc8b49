"""Result types: deployment results and per-task prediction responses (pydantic, no IO).

Every prediction response carries vi-sdk's result shape as :attr:`PredictionResponse.result`
(so a script written for ``vi.deployment.nim`` reads ``r.result.sentence``,
``r.result.groundings[0].grounding``, ``r.result.answer``, ``r.result.caption`` or, for the
generic task, ``r.result`` as text), with boxes in the model's own coordinates as vi-sdk gives
them. The richer fields sit beside it on the response: boxes converted to pixels of the original
image (:attr:`PhraseGroundingResponse.groundings`), usage, timings and the reasoning text.
:attr:`PredictionResponse.plain_result` is the result as plain JSON values with boxes in
original-image pixels (what ``.result`` returned before vi-sdk parity).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nim_async.catalog import BoxFormat

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "BoundingBox",
    "FreeformCaption",
    "FreeformResponse",
    "GenericResponse",
    "GroundedPhrase",
    "Grounding",
    "NIMDeploymentResult",
    "PhraseGrounding",
    "PhraseGroundingResponse",
    "PredictionResponse",
    "PredictionTimings",
    "TextResponse",
    "Usage",
    "VQAAnswer",
    "VQAResponse",
]

Coordinate = int | float
"""One box coordinate as the model wrote it (integers stay integers)."""


def _base_url(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


class NIMDeploymentResult(BaseModel):
    """Result of a NIM container deployment.

    Attributes:
        container_id: Docker container ID (of replica 0 when there are several).
        container_name: Name of the running container (replica 0's, which is also the
            deployment's name).
        served_model_name: Name the model is served as.
        port: Host port the container is exposed on (replica 0's).
        available_models: Model IDs the server lists at ``/v1/models``.
        host: Host address the port is published on.
        reused: Whether an already-running container was reused.
        endpoints: The base URL of every replica (``http://host:port``), in replica order;
            ``[base_url]`` for a single container (filled in when not given).
    """

    model_config = ConfigDict(frozen=True)

    container_id: str
    container_name: str
    served_model_name: str | None = None
    port: int
    available_models: list[str] | None = None
    host: str = "127.0.0.1"
    reused: bool = False
    endpoints: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _default_endpoints(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("endpoints") and "port" in data:
            data = {
                **data,
                "endpoints": [_base_url(str(data.get("host") or "127.0.0.1"), int(data["port"]))],
            }
        return data

    @property
    def base_url(self) -> str:
        """The URL of the deployed NIM (``http://host:port``; replica 0's)."""
        return _base_url(self.host, self.port)


class Usage(BaseModel):
    """Token accounting reported by the server."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class PredictionTimings(BaseModel):
    """Client-side timings of one prediction, in seconds.

    Attributes:
        encode: Loading, resizing and encoding the image.
        time_to_first_token: From sending the request to the first content token (streaming).
        total: From sending the request to the last byte of the answer.
    """

    model_config = ConfigDict(frozen=True)

    encode: float = 0.0
    time_to_first_token: float | None = None
    total: float = 0.0


class PredictionResponse(BaseModel):
    """Fields every prediction response carries.

    Attributes:
        task_type: The task that produced it (``"phrase-grounding"``, ``"vqa"``, ``"freeform"``,
            ``"video-freeform"``, ``"generic"``).
        model: The served model name that answered.
        prompt: The user prompt that was sent.
        raw_output: The full text the model produced, reasoning included.
        thinking: The ``<think>…</think>`` reasoning, when the model emitted any.
        usage: Token accounting from the server.
        finish_reason: Why generation ended (``"stop"``, ``"length"``).
        image_size: ``(width, height)`` of the original image.
        timings: Client-side timings.
    """

    model_config = ConfigDict(frozen=True)

    task_type: str
    model: str = ""
    prompt: str
    raw_output: str
    thinking: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    image_size: tuple[int, int] | None = None
    timings: PredictionTimings | None = None

    @property
    def result(self) -> Any:
        """The task-specific result in vi-sdk's shape (overridden by each response type)."""
        return self.raw_output

    @property
    def plain_result(self) -> Any:
        """The result as plain JSON values (text, or dicts and lists; boxes in pixels)."""
        return self.result


# ---------------------------------------------------------------- vi-sdk's result models


class GroundedPhrase(BaseModel):
    """A phrase and its boxes as the model emitted them (vi-sdk's ``GroundedPhrase``).

    Attributes:
        phrase: The words of the sentence the boxes ground.
        grounding: ``[[xmin, ymin, xmax, ymax], ...]`` in the model's own coordinates (0-1024
            for models trained on Vi, 0-1000 for Qwen3-VL, resized-input pixels for
            Qwen2.5-VL); see :attr:`PhraseGroundingResponse.groundings` for pixels.
    """

    model_config = ConfigDict(frozen=True)

    phrase: str
    grounding: list[list[Coordinate]] = Field(default_factory=list)


class PhraseGrounding(BaseModel):
    """A sentence and its grounded phrases (vi-sdk's ``PhraseGrounding``).

    Attributes:
        sentence: The sentence about the image.
        groundings: One entry per grounded phrase.
    """

    model_config = ConfigDict(frozen=True)

    sentence: str
    groundings: list[GroundedPhrase] = Field(default_factory=list)


class VQAAnswer(BaseModel):
    """The answer to a question about the image (vi-sdk's ``VQAAnswer``).

    Attributes:
        answer: The answer text.
    """

    model_config = ConfigDict(frozen=True)

    answer: str


class FreeformCaption(BaseModel):
    """A free-form text answer (vi-sdk's ``FreeformCaption``).

    Attributes:
        caption: The text.
    """

    model_config = ConfigDict(frozen=True)

    caption: str


def _model_number(value: float) -> Coordinate:
    return int(value) if value.is_integer() else value


class BoundingBox(BaseModel):
    """One box, in the model's own coordinates and in pixels of the original image.

    Attributes:
        model_coords: ``[xmin, ymin, xmax, ymax]`` as the model emitted it.
        pixels: ``[xmin, ymin, xmax, ymax]`` in pixels of the original image.
        box_format: The convention of :attr:`model_coords`.
    """

    model_config = ConfigDict(frozen=True)

    model_coords: tuple[float, float, float, float]
    pixels: tuple[float, float, float, float]
    box_format: BoxFormat


class Grounding(BaseModel):
    """A phrase of the sentence and the boxes that ground it."""

    model_config = ConfigDict(frozen=True)

    phrase: str
    boxes: list[BoundingBox] = Field(default_factory=list)


class PhraseGroundingResponse(PredictionResponse):
    """Phrase grounding result: a sentence and boxes for its phrases."""

    task_type: str = "phrase-grounding"
    sentence: str
    groundings: list[Grounding] = Field(default_factory=list)

    @property
    def result(self) -> PhraseGrounding:
        """vi-sdk's shape: ``sentence`` and ``groundings[i].phrase`` / ``.grounding``.

        Boxes are in the model's own coordinates; :attr:`groundings` has them in pixels of the
        original image.
        """
        return PhraseGrounding(
            sentence=self.sentence,
            groundings=[
                GroundedPhrase(
                    phrase=g.phrase,
                    grounding=[[_model_number(v) for v in b.model_coords] for b in g.boxes],
                )
                for g in self.groundings
            ],
        )

    @property
    def plain_result(self) -> dict[str, Any]:
        """The grounding as the task's JSON shape, boxes in original-image pixels."""
        return {
            "sentence": self.sentence,
            "groundings": [
                {"phrase": g.phrase, "grounding": [list(b.pixels) for b in g.boxes]}
                for g in self.groundings
            ],
        }

    def draw(self, image: Image.Image, **kwargs: Any) -> Image.Image:
        """Return a copy of ``image`` with the boxes and phrase labels drawn on it.

        Args:
            image: The original image the prediction was made on.
            **kwargs: Passed to :func:`nim_async.draw.draw_groundings`.

        Returns:
            A new RGB image.
        """
        from nim_async.draw import draw_groundings

        drawn: Image.Image = draw_groundings(image, self, **kwargs)
        return drawn


class VQAResponse(PredictionResponse):
    """Visual question answering result."""

    task_type: str = "vqa"
    answer: str

    @property
    def result(self) -> VQAAnswer:
        """vi-sdk's shape: ``result.answer``."""
        return VQAAnswer(answer=self.answer)

    @property
    def plain_result(self) -> str:
        """The answer text."""
        return self.answer


class FreeformResponse(PredictionResponse):
    """Free-form answer: ``{"freeform": {"caption": ...}}`` (also the video task's response).

    Attributes:
        caption: The text the model wrote.
    """

    task_type: str = "freeform"
    caption: str

    @property
    def result(self) -> FreeformCaption:
        """vi-sdk's shape: ``result.caption``."""
        return FreeformCaption(caption=self.caption)

    @property
    def plain_result(self) -> str:
        """The caption text."""
        return self.caption


class GenericResponse(PredictionResponse):
    """The model's answer as text, unparsed (the ``generic`` task).

    Attributes:
        text: The answer with any ``<think>`` block removed (:attr:`raw_output` keeps it).
    """

    task_type: str = "generic"
    text: str

    @property
    def result(self) -> str:
        """The answer text (vi-sdk's ``GenericResponse.result``)."""
        return self.text


class TextResponse(PredictionResponse):
    """A response whose text is returned as is.

    Used when the caller sets a guided-decoding constraint other than the task's own schema
    (for example ``guided_choice=["yes", "no"]``): the task parser is not applied, and
    :attr:`text` is the constrained output.
    """

    text: str

    @property
    def result(self) -> str:
        """The (constrained) text."""
        return self.text
