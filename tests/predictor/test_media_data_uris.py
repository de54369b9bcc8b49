"""Images and videos read ``data:`` URIs the same way (one helper, protocol/media.py).

``;base64`` is matched in any case for both (images used to refuse ``;BASE64``); images still
decode base64 wrapped over lines, videos still refuse any stray character.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from nim_async.errors import MediaError
from nim_async.predict.media import load_media

BUDGET = 1280 * 28 * 28


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), "red").save(buf, format="PNG")
    return buf.getvalue()


async def test_image_data_uris_any_case_and_wrapped() -> None:
    data = _png()
    text = base64.b64encode(data).decode()
    for uri in (
        "data:image/png;base64," + text,
        "data:image/png;BASE64," + text,
        "data:image/png;base64," + text[:10] + "\n" + text[10:],
    ):
        image = await load_media(uri, max_pixels=BUDGET)
        assert image.kind == "image"
        assert image.original_size == (8, 6)
        assert base64.b64decode(image.b64) == data


async def test_data_uri_errors_name_the_form_and_the_reason() -> None:
    with pytest.raises(MediaError, match=r"only base64 data URIs are supported \(data:image/"):
        await load_media("data:image/png," + "x" * 8, max_pixels=BUDGET)
    with pytest.raises(MediaError, match=r"only base64 data URIs are supported \(data:video/"):
        await load_media("data:video/mp4,AAAA", max_pixels=BUDGET)
    with pytest.raises(MediaError, match="invalid base64 in data URI"):
        await load_media("data:image/png;base64,abc", max_pixels=BUDGET)  # bad padding
    with pytest.raises(MediaError, match="invalid base64 in data URI"):
        await load_media("data:video/mp4;base64,AAAA\nAAAA", max_pixels=BUDGET)
