"""Pictures and COCO export of grounding results (real responses from the emulator)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
from PIL import Image

from nim_async.export import coco_from_jsonl, to_coco, write_coco
from nim_async.predict.batch import BatchResult, result_record
from nim_async.predict.predictor import AsyncNIMPredictor
from nim_async.results import BoundingBox, Grounding, PhraseGroundingResponse, VQAResponse

MODEL = "cosmos-reason1-7b"


def grounding(boxes: dict[str, list[tuple[float, float, float, float]]]) -> PhraseGroundingResponse:
    return PhraseGroundingResponse(
        prompt="p",
        raw_output="",
        sentence=" and ".join(boxes),
        image_size=(200, 100),
        groundings=[
            Grounding(
                phrase=phrase,
                boxes=[BoundingBox(model_coords=b, pixels=b, box_format="qwen25-abs") for b in bs],
            )
            for phrase, bs in boxes.items()
        ],
    )


async def test_draw_on_an_emulator_grounding(emulator: Any, image_factory: Any) -> None:
    data = image_factory(size=(320, 200), shapes=[("red", (40, 50, 140, 150))], fmt="PNG")
    async with AsyncNIMPredictor(MODEL, "phrase-grounding", base_url=emulator.url) as predictor:
        response = await predictor(data)
    assert isinstance(response, PhraseGroundingResponse)
    original = Image.open(io.BytesIO(data))
    drawn = response.draw(original)
    assert drawn.size == original.size
    assert drawn is not original
    assert original.getpixel((40, 100)) == (255, 0, 0)  # the original is untouched
    x0, y0, _x1, y1 = response.groundings[0].boxes[0].pixels
    # The outline sits on the box's left edge, in the first palette colour.
    edge = drawn.getpixel((round(x0) + 1, round((y0 + y1) / 2)))
    assert edge == (230, 25, 75)


def test_labels_stay_on_the_picture() -> None:
    response = grounding({"a long phrase at the right edge": [(180, 0, 199, 20)]})
    image = Image.new("RGB", (200, 100), "white")
    drawn = response.draw(image)
    # The label tab (first palette colour) was shifted left to fit: some of it lies left of
    # the box, none is lost past the right edge.
    row = [drawn.getpixel((x, 5)) for x in range(0, 180)]
    assert (230, 25, 75) in row


def test_to_coco_converts_boxes_to_xywh() -> None:
    response = grounding({"a red square": [(10, 20, 50, 60), (100, 10, 110, 30)], "sky": []})
    coco = to_coco([("a.png", response)])
    assert coco["images"] == [
        {
            "id": 1,
            "file_name": "a.png",
            "caption": "a red square and sky",
            "width": 200,
            "height": 100,
        }
    ]
    assert [c["name"] for c in coco["categories"]] == ["a red square", "sky"]
    boxes = [(a["bbox"], a["area"], a["category_id"]) for a in coco["annotations"]]
    assert boxes == [([10, 20, 40, 40], 1600, 1), ([100, 10, 10, 20], 200, 1)]
    assert all(a["iscrowd"] == 0 and a["image_id"] == 1 for a in coco["annotations"])


def test_categories_are_shared_across_images_by_phrase() -> None:
    first = grounding({"A red square": [(0, 0, 10, 10)]})
    second = grounding({"a red square": [(5, 5, 10, 10)], "a blue circle": [(0, 0, 1, 1)]})
    coco = to_coco([("1.png", first), ("2.png", second)])
    assert [c["name"] for c in coco["categories"]] == ["a red square", "a blue circle"]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 1, 2]
    assert [a["phrase"] for a in coco["annotations"]] == [
        "A red square",
        "a red square",
        "a blue circle",
    ]


def test_coco_from_batch_records_skips_errors_and_other_tasks(tmp_path: Path) -> None:
    ok = BatchResult(0, "a.png", grounding({"x": [(1, 2, 3, 4)]}), None, 1, 0.1)
    vqa = BatchResult(1, "b.png", VQAResponse(prompt="q", raw_output="", answer="2"), None, 1, 0.1)
    from nim_async.errors import ServerError

    bad = BatchResult(2, "c.png", None, ServerError(503, "busy"), 3, 0.5)
    results = tmp_path / "r.jsonl"
    results.write_bytes(
        b"".join(orjson.dumps(result_record(r)) + b"\n" for r in (ok, vqa, bad)) + b'{"torn'
    )
    out = tmp_path / "coco.json"
    assert coco_from_jsonl(results, out) == 1
    coco = orjson.loads(out.read_bytes())
    assert [i["file_name"] for i in coco["images"]] == ["a.png"]
    assert coco["annotations"][0]["bbox"] == [1.0, 2.0, 2.0, 2.0]
    assert write_coco([], tmp_path / "empty.json") == 0
