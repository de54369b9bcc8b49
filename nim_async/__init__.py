"""nim_async: deploy NVIDIA NIM vision-language containers and run inference against them.

Async core::

    async with AsyncNIMPredictor(model_name="cosmos-reason1-7b", task_type="vqa") as p:
        result = await p(source="image.jpg", user_prompt="How many cars?")

Blocking facade (the documented API)::

    predictor = NIMPredictor(model_name="cosmos-reason1-7b", task_type="phrase-grounding")
    result = predictor(source="image.jpg")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nim_async.deploy import events as _deploy_events

if TYPE_CHECKING:
    from nim_async.config import NIMConfig, NIMSamplingParams
    from nim_async.deploy.deployer import AsyncNIMDeployer, ContainerStatus
    from nim_async.errors import (
        APIError,
        BadRequestError,
        ContainerExistsError,
        ContainerExitedError,
        DockerUnavailableError,
        EndpointsUnavailableError,
        GPURuntimeError,
        GuidedDecodingError,
        ImagePullError,
        InvalidConfigError,
        MediaError,
        ModelIncompatibilityError,
        ModelNotFoundError,
        NIMDeploymentError,
        NIMError,
        NIMPredictionError,
        PortInUseError,
        PredictionParseError,
        PredictionTimeoutError,
        RateLimitError,
        RegistryAuthError,
        ServerError,
        ServiceNotReadyError,
        ServiceUnavailableError,
        StreamError,
        WeightsDownloadError,
        WeightsError,
    )
    from nim_async.predict.batch import BatchResult
    from nim_async.predict.endpoints import Balancing
    from nim_async.predict.predictor import AsyncNIMPredictor, AsyncPredictionStream
    from nim_async.results import (
        BoundingBox,
        FreeformCaption,
        FreeformResponse,
        GenericResponse,
        GroundedPhrase,
        Grounding,
        NIMDeploymentResult,
        PhraseGrounding,
        PhraseGroundingResponse,
        PredictionResponse,
        PredictionTimings,
        TextResponse,
        Usage,
        VQAAnswer,
        VQAResponse,
    )
    from nim_async.sync.deployer import NIMDeployer
    from nim_async.sync.predictor import NIMPredictor

__version__ = "0.1.0"

# Public names resolve on first use, so `import nim_async` (and the CLI) stays fast and does not
# load aiodocker, httpx or aiohttp until a class that needs them is touched.
_LAZY: dict[str, str] = {
    "APIError": "nim_async.errors",
    "AsyncNIMDeployer": "nim_async.deploy.deployer",
    "AsyncNIMPredictor": "nim_async.predict.predictor",
    "Balancing": "nim_async.predict.endpoints",
    "AsyncPredictionStream": "nim_async.predict.predictor",
    "BadRequestError": "nim_async.errors",
    "BatchResult": "nim_async.predict.batch",
    "BoundingBox": "nim_async.results",
    "ContainerExistsError": "nim_async.errors",
    "ContainerExitedError": "nim_async.errors",
    "ContainerStatus": "nim_async.deploy.deployer",
    "DockerUnavailableError": "nim_async.errors",
    "EndpointsUnavailableError": "nim_async.errors",
    "FreeformCaption": "nim_async.results",
    "FreeformResponse": "nim_async.results",
    "GPURuntimeError": "nim_async.errors",
    "GenericResponse": "nim_async.results",
    "GroundedPhrase": "nim_async.results",
    "Grounding": "nim_async.results",
    "GuidedDecodingError": "nim_async.errors",
    "ImagePullError": "nim_async.errors",
    "InvalidConfigError": "nim_async.errors",
    "MediaError": "nim_async.errors",
    "ModelIncompatibilityError": "nim_async.errors",
    "ModelNotFoundError": "nim_async.errors",
    "NIMConfig": "nim_async.config",
    "NIMDeployer": "nim_async.sync.deployer",
    "NIMDeploymentError": "nim_async.errors",
    "NIMDeploymentResult": "nim_async.results",
    "NIMError": "nim_async.errors",
    "NIMPredictionError": "nim_async.errors",
    "NIMPredictor": "nim_async.sync.predictor",
    "NIMSamplingParams": "nim_async.config",
    "PhraseGrounding": "nim_async.results",
    "PhraseGroundingResponse": "nim_async.results",
    "PortInUseError": "nim_async.errors",
    "PredictionParseError": "nim_async.errors",
    "PredictionResponse": "nim_async.results",
    "PredictionTimeoutError": "nim_async.errors",
    "PredictionTimings": "nim_async.results",
    "RateLimitError": "nim_async.errors",
    "RegistryAuthError": "nim_async.errors",
    "ServerError": "nim_async.errors",
    "ServiceNotReadyError": "nim_async.errors",
    "ServiceUnavailableError": "nim_async.errors",
    "StreamError": "nim_async.errors",
    "TextResponse": "nim_async.results",
    "Usage": "nim_async.results",
    "VQAAnswer": "nim_async.results",
    "VQAResponse": "nim_async.results",
    "WeightsDownloadError": "nim_async.errors",
    "WeightsError": "nim_async.errors",
}


def _console_reporter(console: Any) -> Any:
    from nim_async.ui.deploy import console_reporter

    return console_reporter(console)


# The library reports deploys as plain events; this wires nim_async.ui's rich drawing in as the
# default console sink, so that deploy/ (core) never imports ui/ (the layer above it).
_deploy_events.set_console_reporter(_console_reporter)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nim_async' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "APIError",
    "AsyncNIMDeployer",
    "AsyncNIMPredictor",
    "AsyncPredictionStream",
    "BadRequestError",
    "Balancing",
    "BatchResult",
    "BoundingBox",
    "ContainerExistsError",
    "ContainerExitedError",
    "ContainerStatus",
    "DockerUnavailableError",
    "EndpointsUnavailableError",
    "FreeformCaption",
    "FreeformResponse",
    "GPURuntimeError",
    "GenericResponse",
    "GroundedPhrase",
    "Grounding",
    "GuidedDecodingError",
    "ImagePullError",
    "InvalidConfigError",
    "MediaError",
    "ModelIncompatibilityError",
    "ModelNotFoundError",
    "NIMConfig",
    "NIMDeployer",
    "NIMDeploymentError",
    "NIMDeploymentResult",
    "NIMError",
    "NIMPredictionError",
    "NIMPredictor",
    "NIMSamplingParams",
    "PhraseGrounding",
    "PhraseGroundingResponse",
    "PortInUseError",
    "PredictionParseError",
    "PredictionResponse",
    "PredictionTimeoutError",
    "PredictionTimings",
    "RateLimitError",
    "RegistryAuthError",
    "ServerError",
    "ServiceNotReadyError",
    "ServiceUnavailableError",
    "StreamError",
    "TextResponse",
    "Usage",
    "VQAAnswer",
    "VQAResponse",
    "WeightsDownloadError",
    "WeightsError",
    "__version__",
]
