"""One exception hierarchy for the async core and the sync facade.

Every error that ``nim_async`` raises derives from :class:`NIMError`. Third-party exceptions
(httpx, aiodocker, aiohttp, pydantic) are translated where they enter the library and chained
with ``raise ... from exc``, so callers never need to catch a third-party type.

::

    NIMError
    ├── InvalidParameterError              also a ValueError; .field (NIMSamplingParams etc.)
    ├── OutputFileError                    also a ValueError; .path (a results file)
    ├── NIMDeploymentError                 deploying / stopping containers
    │   ├── InvalidConfigError             also a ValueError
    │   ├── ContainerExistsError           .container_name
    │   ├── ServiceNotReadyError           .container_name, .timeout
    │   ├── ContainerExitedError           .container_name, .exit_code, .oom_killed, .logs
    │   ├── ModelIncompatibilityError      .image_name, .details
    │   ├── APIError                       Docker engine / registry failures
    │   │   ├── DockerUnavailableError     daemon not reachable
    │   │   ├── RegistryAuthError          registry refused the credentials
    │   │   ├── ImagePullError             pull failed (incl. errors inside the 200 stream)
    │   │   ├── GPURuntimeError            no NVIDIA runtime on the host
    │   │   └── PortInUseError             .port
    │   └── WeightsError                   custom weights (Vi download, local checkpoints)
    │       └── WeightsDownloadError       .status_code
    └── NIMPredictionError                 talking to a running NIM
        ├── MediaError                     also a ValueError; .source
        ├── ServiceUnavailableError        no server answers at host:port; .url
        │   └── EndpointsUnavailableError  every endpoint of a predictor is down; .endpoints
        ├── ServerError                    HTTP error from the server; .status_code, .message
        │   ├── BadRequestError            400 / 422
        │   ├── ModelNotFoundError         404
        │   └── RateLimitError             429
        ├── PredictionTimeoutError         request exceeded its timeout
        ├── StreamError                    error mid-stream; .partial_text
        ├── ResponseTooLargeError          answer over the client's cap; .limit, .what
        ├── PredictionParseError           also a ValueError; .raw_output
        └── GuidedDecodingError            output violates the requested constraint; .raw_output
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "BadRequestError",
    "ContainerExistsError",
    "ContainerExitedError",
    "DockerUnavailableError",
    "EndpointsUnavailableError",
    "GPURuntimeError",
    "GuidedDecodingError",
    "ImagePullError",
    "InvalidConfigError",
    "InvalidParameterError",
    "MediaError",
    "ModelIncompatibilityError",
    "ModelNotFoundError",
    "NIMDeploymentError",
    "NIMError",
    "NIMPredictionError",
    "OutputFileError",
    "PortInUseError",
    "PredictionParseError",
    "PredictionTimeoutError",
    "RateLimitError",
    "RegistryAuthError",
    "ResponseTooLargeError",
    "ServerError",
    "ServiceNotReadyError",
    "ServiceUnavailableError",
    "StreamError",
    "WeightsDownloadError",
    "WeightsError",
]


class NIMError(Exception):
    """Base class of every error raised by ``nim_async``."""


class InvalidParameterError(NIMError, ValueError):
    """A parameter value is invalid (e.g. a :class:`~nim_async.config.NIMSamplingParams` field).

    Args:
        message: What is wrong and how to fix it.
        field: The parameter's name (``None`` when several are wrong or it is unknown).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class OutputFileError(NIMError, ValueError):
    """A results file cannot be written where asked (not a regular file, or an OS error).

    Args:
        message: The path and the cause, in one line.
        path: The path given.
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


# --------------------------------------------------------------------------- deployment


class NIMDeploymentError(NIMError):
    """Base exception for NIM deployment errors (documented name)."""


class InvalidConfigError(NIMDeploymentError, ValueError):
    """Raised when configuration is invalid.

    Attributes:
        field: Name of the offending configuration field, when known.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ContainerExistsError(NIMDeploymentError):
    """Raised when a container with the same name exists and may not be reused or removed.

    Attributes:
        container_name: Name of the existing container.
    """

    def __init__(self, container_name: str, message: str | None = None) -> None:
        super().__init__(
            message
            or (
                f"A container named {container_name!r} already exists. Set "
                "auto_kill_existing_container=True to replace it, or stop it with "
                f"NIMDeployer.stop({container_name!r})."
            )
        )
        self.container_name = container_name


class ServiceNotReadyError(NIMDeploymentError):
    """Raised when the NIM service fails to become ready within the timeout.

    Attributes:
        container_name: Name of the container.
        timeout: Timeout value (seconds) that was exceeded.
    """

    def __init__(self, container_name: str, timeout: float, message: str | None = None) -> None:
        super().__init__(
            message or f"NIM container {container_name!r} was not ready after {timeout:g} seconds."
        )
        self.container_name = container_name
        self.timeout = timeout


class ContainerExitedError(NIMDeploymentError):
    """Raised when the container stops while the deployer waits for it to become ready.

    Attributes:
        container_name: Name of the container.
        exit_code: The container's exit code.
        oom_killed: Whether the kernel killed it for running out of memory.
        logs: The last log lines of the container.
    """

    def __init__(
        self,
        container_name: str,
        exit_code: int,
        *,
        oom_killed: bool = False,
        logs: str = "",
    ) -> None:
        reason = "was killed for running out of memory" if oom_killed else "exited"
        message = f"NIM container {container_name!r} {reason} (exit code {exit_code})."
        if logs:
            message += f"\nLast log lines:\n{logs}"
        super().__init__(message)
        self.container_name = container_name
        self.exit_code = exit_code
        self.oom_killed = oom_killed
        self.logs = logs


class ModelIncompatibilityError(NIMDeploymentError):
    """Raised when a custom model is incompatible with the target container.

    Attributes:
        image_name: Name of the container image.
        details: Error details.
        incompatibility_details: The same text as :attr:`details` (vi-sdk's name for it).
    """

    def __init__(
        self,
        image_name: str,
        details: str | None = None,
        *,
        incompatibility_details: str | None = None,
    ) -> None:
        details = details if details is not None else incompatibility_details
        message = f"The model is incompatible with the NIM image {image_name!r}"
        super().__init__(f"{message}: {details}" if details else f"{message}.")
        self.image_name = image_name
        self.details = details
        self.incompatibility_details = details


class APIError(NIMDeploymentError):
    """Raised when a Docker engine or registry operation fails.

    Attributes:
        status_code: HTTP status returned by the Docker engine, when there was one.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class DockerUnavailableError(APIError):
    """Raised when the Docker daemon cannot be reached."""


class RegistryAuthError(APIError):
    """Raised when the container registry refuses the credentials."""


class ImagePullError(APIError):
    """Raised when pulling the NIM image fails."""


class GPURuntimeError(APIError):
    """Raised when the host has no GPU container runtime (NVIDIA Container Toolkit)."""


class PortInUseError(APIError):
    """Raised when the host port is already allocated.

    Attributes:
        port: The port that is in use.
    """

    def __init__(self, port: int, message: str | None = None) -> None:
        super().__init__(
            message
            or f"Port {port} is already in use on the host. Choose another NIMConfig.port "
            "or stop whatever listens there."
        )
        self.port = port


class WeightsError(NIMDeploymentError):
    """Raised when custom weights cannot be fetched, unpacked or read."""


class WeightsDownloadError(WeightsError):
    """Raised when downloading custom weights from Datature Vi fails.

    Attributes:
        status_code: HTTP status of the failing response, when there was one.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


# --------------------------------------------------------------------------- prediction


class NIMPredictionError(NIMError):
    """Base class of errors raised while running inference against a NIM."""


class MediaError(NIMPredictionError, ValueError):
    """Raised when an input image cannot be loaded or decoded.

    Attributes:
        source: A short description of the offending source (path, URL, or type).
    """

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class ServiceUnavailableError(NIMPredictionError):
    """Raised when no NIM answers at the configured address.

    Attributes:
        url: The base URL that was tried.
    """

    def __init__(self, url: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"No NIM answers at {url}. Is the container running and the port right? "
            "(deploy one with NIMDeployer, or start the emulator with `nim-async emulate`)"
        )
        self.url = url


class EndpointsUnavailableError(ServiceUnavailableError):
    """Raised when every endpoint of a predictor with several servers is down.

    Attributes:
        url: The first endpoint.
        endpoints: Each endpoint's base URL and why it is down (``"connection refused"``,
            ``"HTTP 503"``, ``"the stream broke (connection reset)"``), in the predictor's order.
    """

    def __init__(self, endpoints: dict[str, str]) -> None:
        listed = "; ".join(f"{url}: {why}" for url, why in endpoints.items())
        super().__init__(
            next(iter(endpoints), ""),
            f"All {len(endpoints)} endpoints are down ({listed}). Are the containers running "
            "and the ports right? Down endpoints are health-checked in the background and "
            "used again once ready.",
        )
        self.endpoints = dict(endpoints)

    def __reduce__(self) -> tuple[type[EndpointsUnavailableError], tuple[dict[str, str]]]:
        return (type(self), (self.endpoints,))


class ServerError(NIMPredictionError):
    """Raised when the server answers with an HTTP error.

    Attributes:
        status_code: HTTP status code.
        message: The server's error message.
        error_type: The server's error type string, when given.
        retry_after: Seconds the server asked to wait (its ``Retry-After`` header), when given.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"NIM server returned HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.error_type = error_type
        self.retry_after = retry_after


class BadRequestError(ServerError):
    """Raised when the server rejects the request as invalid (HTTP 400 / 422)."""


class ModelNotFoundError(ServerError):
    """Raised when the server does not serve the requested model (HTTP 404)."""


class RateLimitError(ServerError):
    """Raised when the server refuses the request for load reasons (HTTP 429)."""


class PredictionTimeoutError(NIMPredictionError):
    """Raised when a request exceeds its timeout."""


class StreamError(NIMPredictionError):
    """Raised when a streamed response breaks off or carries an error.

    Attributes:
        partial_text: The text received before the failure.
    """

    def __init__(self, message: str, *, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text


class ResponseTooLargeError(NIMPredictionError):
    """Raised when a server's answer is larger than the client agreed to read.

    Attributes:
        limit: The cap in bytes that was exceeded.
        what: What was capped (``"server-sent event"``, ``"response body"``, ...).
    """

    def __init__(self, message: str, *, limit: int, what: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.what = what


class PredictionParseError(NIMPredictionError, ValueError):
    """Raised when the model output cannot be parsed into the task's result.

    Attributes:
        raw_output: The full text the model produced.
    """

    def __init__(self, message: str, *, raw_output: str) -> None:
        super().__init__(message)
        self.raw_output = raw_output


class GuidedDecodingError(NIMPredictionError):
    """Raised when the output violates the requested guided-decoding constraint.

    Some server versions ignore ``guided_*`` fields silently; this error makes that visible.

    Attributes:
        raw_output: The text the server returned.
        constraint: Which constraint was violated (``"choice"``, ``"regex"``, ``"json"``).
    """

    def __init__(self, message: str, *, raw_output: str, constraint: str) -> None:
        super().__init__(message)
        self.raw_output = raw_output
        self.constraint = constraint
