"""The Datature Vi API: which archive holds a run's model, and where to download it.

``GET {endpoint}/workspaces/{organization_id}/runs/{run_id}/outputs[/{ckpt}]
?intent=sdkLocalDeploy&contents=y`` with ``Authorization: Bearer <secret key>`` and
``Organization-Id`` (as vi-sdk sends them) answers the run's outputs; the chosen one carries a
pre-signed download URL (``status.contents.downloadUrl.url``) and its expiry (``expiresAt``).
Errors name the credential or id at fault, never a secret's value.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import orjson

from nim_async.config import NIMConfig
from nim_async.deploy.weights.download import retry_policy
from nim_async.errors import NIMPredictionError, WeightsDownloadError
from nim_async.http.download import DownloadClient
from nim_async.http.errors import failure_kind
from nim_async.protocol.scrub import scrub

__all__ = ["RunOutput", "parse_run_output", "request_run_output"]

_API_ATTEMPTS = 3


@dataclass(frozen=True)
class RunOutput:
    """One downloadable output of a run.

    Attributes:
        run_output_id: Its id (names the archive file, so a resumed file is the same object).
        url: The pre-signed download URL (its query is a secret).
        expires_at: When the URL expires, in epoch seconds, if Vi said.
    """

    run_output_id: str
    url: str
    expires_at: float | None  # epoch seconds


def _parse_expiry(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
        return number / 1000.0 if number > 1e11 else number  # epoch ms or s
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            with contextlib.suppress(ValueError):
                return _parse_expiry(float(value))
    return None


def parse_run_output(body: object, config: NIMConfig) -> RunOutput:
    """The output to download from a Vi outputs answer (the latest when it lists several).

    Args:
        body: The parsed JSON answer.
        config: The configuration naming the run, for messages.

    Raises:
        WeightsDownloadError: if there is no exported model yet or the answer is unexpected.
    """
    what = f"run {config.run_id!r}" + (f" checkpoint {config.ckpt!r}" if config.ckpt else "")
    model: object = body
    if isinstance(body, dict) and isinstance(body.get("items"), list):
        items = body["items"]
        if not items:
            raise WeightsDownloadError(
                f"Datature Vi lists no outputs for {what} yet: it has no exported model "
                "(training may still be running)."
            )
        model = items[-1]  # the latest checkpoint
    if not isinstance(model, dict):
        raise WeightsDownloadError(f"Datature Vi returned an unexpected answer for {what}.")
    status = model.get("status")
    contents = status.get("contents") if isinstance(status, dict) else None
    download = contents.get("downloadUrl") if isinstance(contents, dict) else None
    url = download.get("url") if isinstance(download, dict) else None
    if not isinstance(url, str) or not url:
        raise WeightsDownloadError(
            f"The model of {what} is not ready for download yet (Datature Vi has not "
            "finished exporting it). Try again in a few minutes."
        )
    assert isinstance(download, dict)
    output_id = model.get("runOutputId") or config.ckpt or "latest"
    return RunOutput(
        run_output_id=str(output_id),
        url=url,
        expires_at=_parse_expiry(download.get("expiresAt")),
    )


def _api_error(config: NIMConfig, status_code: int, body: str) -> WeightsDownloadError:
    org = config.organization_id
    what = f"run {config.run_id!r}" + (f" (checkpoint {config.ckpt!r})" if config.ckpt else "")
    if status_code == 401:
        message = (
            "Datature Vi rejected the secret key (HTTP 401): check NIMConfig.secret_key / "
            "DATATURE_VI_SECRET_KEY."
        )
    elif status_code == 403:
        message = (
            f"Datature Vi refused access to {what} in organization {org!r} (HTTP 403): check "
            "that the secret key (secret_key / DATATURE_VI_SECRET_KEY) belongs to that "
            "organization_id (DATATURE_VI_ORGANIZATION_ID) and may read the run."
        )
    elif status_code == 404:
        message = (
            f"Datature Vi found no {what} in organization {org!r} (HTTP 404): check run_id, "
            "ckpt and organization_id."
        )
    else:
        snippet = scrub(body[:300], (config.secret_key,)).strip()
        message = f"Datature Vi answered HTTP {status_code} for {what}" + (
            f": {snippet}" if snippet else "."
        )
    return WeightsDownloadError(message, status_code=status_code)


async def request_run_output(client: DownloadClient, config: NIMConfig) -> RunOutput:
    """Ask Vi for the run's output (retried under the one policy: no answer, 429, 502-504).

    Args:
        client: The HTTP client.
        config: Names the run, the checkpoint, the organization and the secret key.

    Raises:
        WeightsDownloadError: if Vi cannot be reached, refuses, or has no model to give.
    """
    assert config.run_id is not None
    assert config.organization_id is not None
    assert config.secret_key is not None
    path = (
        f"/workspaces/{quote(config.organization_id, safe='')}"
        f"/runs/{quote(config.run_id, safe='')}/outputs"
    )
    if config.ckpt:
        path += f"/{quote(config.ckpt, safe='')}"
    url = config.endpoint.rstrip("/") + path
    # vi-sdk's wire (SecretKeyAuth.get_headers; ModelLinkParser, whose booleans are y/n).
    headers = {
        "Authorization": f"Bearer {config.secret_key.get_secret_value()}",
        "Organization-Id": config.organization_id,
        "Accept": "application/json",
    }
    params = {"intent": "sdkLocalDeploy", "contents": "y"}
    retry = retry_policy(_API_ATTEMPTS).start(label="GET the run's outputs from Datature Vi")
    while True:
        try:
            answer = await client.get(url, headers=headers, params=params)
            if answer.status != 200:
                raise _api_error(config, answer.status, answer.text)
        except NIMPredictionError as exc:  # no answer (http.errors' mapping)
            if await retry.backoff(exc):
                continue
            raise WeightsDownloadError(
                f"Cannot reach the Datature Vi API at {config.endpoint} "
                f"({failure_kind(exc)}): check the network or DATATURE_VI_API_ENDPOINT."
            ) from exc
        except WeightsDownloadError as exc:  # 429 and 502/503/504 are retried
            if await retry.backoff(exc):
                continue
            raise
        try:
            body = orjson.loads(answer.body)
        except orjson.JSONDecodeError as exc:
            raise WeightsDownloadError(
                f"Datature Vi returned a non-JSON answer for run {config.run_id!r}."
            ) from exc
        return parse_run_output(body, config)
