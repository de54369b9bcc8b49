"""Result types: deployment results and per-task prediction responses (pydantic, no IO)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from nim_async.catalog import BoxFormat

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "BoundingBox",
    "Grounding",
    "NIMDeploymentResult",
    "PhraseGroundingResponse",
    "PredictionResponse",
    "PredictionTimings",
    "TextResponse",
    "Usage",
    "VQAResponse",
]


class NIMDeploymentResult(BaseModel):
    """Result of a NIM container deployment.

    Attributes:
        container_id: Docker container ID.
        container_name: Name of the running container.
        served_model_name: Name the model is served as.
        port: Host port the container is exposed on.
        available_models: Model IDs the server lists at ``/v1/models``.
        host: Host address the port is published on.
        reused: Whether an already-running container was reused.
    """

    model_config = ConfigDict(frozen=True)

    container_id: str
    container_name: str
    served_model_name: str | None = None
    port: int
    available_models: list[str] | None = None
    host: str = "127.0.0.1"
    reused: bool = False

    @property
    def base_url(self) -> str:
        """The URL of the deployed NIM (``http://host:port``)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


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
        task_type: The task that produced it (``"phrase-grounding"``, ``"vqa"``).
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
        """The task-specific result (overridden by each response type)."""
        return self.raw_output


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
    def result(self) -> dict[str, Any]:
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
    def result(self) -> str:
        """The answer text."""
        return self.answer


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
