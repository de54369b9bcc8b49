"""Export phrase-grounding results as COCO-style JSON (no network IO).

Each grounded phrase becomes a COCO category (by its lower-cased text); each box an annotation
with ``bbox = [x, y, width, height]`` in pixels of the original image. The phrase as the model
wrote it and the sentence are kept in extra fields (``phrase``, ``caption``), which COCO tools
ignore.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from nim_async.results import PhraseGroundingResponse, PredictionResponse

__all__ = ["coco_from_jsonl", "to_coco", "write_coco"]

GroundingItem = tuple[str, PhraseGroundingResponse | PredictionResponse | dict[str, Any]]


def _groundings(
    response: PhraseGroundingResponse | PredictionResponse | dict[str, Any],
) -> tuple[str, list[tuple[str, list[list[float]]]], tuple[int, int] | None] | None:
    """Return (sentence, [(phrase, boxes)], image_size) or None when it is not a grounding."""
    if isinstance(response, PhraseGroundingResponse):
        return (
            response.sentence,
            [(g.phrase, [list(b.pixels) for b in g.boxes]) for g in response.groundings],
            response.image_size,
        )
    if isinstance(response, dict):
        result = response.get("result")
        if response.get("status", "ok") != "ok" or not isinstance(result, dict):
            return None
        size = response.get("image_size")
        pairs = [
            (str(g.get("phrase", "")), [list(map(float, box)) for box in g.get("grounding", [])])
            for g in result.get("groundings", [])
            if isinstance(g, dict)
        ]
        image_size = (int(size[0]), int(size[1])) if isinstance(size, list | tuple) else None
        return str(result.get("sentence", "")), pairs, image_size
    return None


def to_coco(items: Iterable[GroundingItem]) -> dict[str, Any]:
    """Build a COCO-style dataset from grounding results.

    Args:
        items: ``(file_name, response)`` pairs; ``response`` is a
            :class:`~nim_async.results.PhraseGroundingResponse` or a ``nim-async batch`` JSON
            record. Items that are not successful groundings are skipped.

    Returns:
        ``{"info", "images", "annotations", "categories"}`` with 1-based ids.
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    categories: dict[str, int] = {}
    for file_name, response in items:
        parsed = _groundings(response)
        if parsed is None:
            continue
        sentence, pairs, size = parsed
        image_id = len(images) + 1
        image: dict[str, Any] = {"id": image_id, "file_name": file_name, "caption": sentence}
        if size is not None:
            image["width"], image["height"] = size
        images.append(image)
        for phrase, boxes in pairs:
            name = phrase.strip().lower()
            category_id = categories.setdefault(name, len(categories) + 1)
            for x0, y0, x1, y1 in boxes:
                width, height = max(0.0, x1 - x0), max(0.0, y1 - y0)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category_id,
                        "bbox": [x0, y0, width, height],
                        "area": width * height,
                        "iscrowd": 0,
                        "phrase": phrase,
                    }
                )
    return {
        "info": {"description": "phrase grounding results exported by nim-async"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name} for name, cid in categories.items()],
    }


def write_coco(items: Iterable[GroundingItem], out: Path) -> int:
    """Write :func:`to_coco` of ``items`` to ``out``.

    Args:
        items: ``(file_name, response)`` pairs, as for :func:`to_coco`.
        out: The JSON file to write.

    Returns:
        The number of images written.
    """
    dataset = to_coco(items)
    out.write_bytes(orjson.dumps(dataset, option=orjson.OPT_INDENT_2))
    return len(dataset["images"])


def _records(path: Path) -> Iterator[GroundingItem]:
    with path.open("rb") as lines:
        for line in lines:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict) and "source" in record:
                yield str(record["source"]), record


def coco_from_jsonl(results: Path, out: Path) -> int:
    """Convert a ``nim-async batch`` results file to COCO-style JSON.

    Args:
        results: The JSON Lines file ``nim-async batch --out`` wrote.
        out: The COCO JSON file to write.

    Returns:
        The number of images written (successful grounding records).
    """
    return write_coco(_records(results), out)
