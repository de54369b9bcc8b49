"""The ``nim-async`` argument parser: every subcommand, its options and its handler's name.

Building the parser imports nothing heavy (no HTTP, Docker, pydantic, Pillow or rich code): a
command's module (:mod:`nim_async.cli.deploy`, ...) is imported only when it runs. Each
subparser names its handler as ``"module:function"`` under :mod:`nim_async.cli`; ``emulate``
and ``bench`` hand their arguments to their own parsers (:data:`DELEGATED`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from nim_async.catalog import BOX_FORMATS

__all__ = [
    "DEFAULT_MODEL",
    "DELEGATED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "build_parser",
]

PROG = "nim-async"
DEFAULT_MODEL = "cosmos-reason1-7b"
# Kept literal so that building the parser imports no task or wire code; a test checks both
# against the registry (nim_async.protocol.tasks) and nim_async.protocol.wire.DIALECTS.
TASK_CHOICES = ("phrase-grounding", "vqa", "freeform", "generic")
DIALECT_CHOICES = ("auto", "openai", "guided", "nvext")
# Subcommands whose argument parsing belongs to another module: everything after the name is
# handed to that module's own ``main(argv)``.
DELEGATED = ("emulate", "bench")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


# --------------------------------------------------------------------------- option groups


def _container_name(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError(f"NAME must be a container name or id, got {value!r}")
    return value


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def _add_nim_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("NIM server")
    group.add_argument(
        "--url",
        help="base URL of a running NIM, e.g. http://127.0.0.1:8000 (overrides --host/--port)",
    )
    group.add_argument("--host", default="127.0.0.1", help="NIM host (default: %(default)s)")
    group.add_argument("--port", type=int, default=8000, help="NIM port (default: %(default)s)")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="served model name, as /v1/models lists it (default: %(default)s)",
    )
    group.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    group.add_argument("--system-prompt", help="system prompt (default: the task's own)")
    group.add_argument(
        "--box-format",
        choices=BOX_FORMATS,
        help="box convention of the model (default: from the model name)",
    )
    group.add_argument(
        "--dialect",
        choices=DIALECT_CHOICES,
        default="auto",
        help="where sampling and guided fields go in the request; auto asks the server "
        "(default: %(default)s)",
    )


def _add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        default="phrase-grounding",
        choices=TASK_CHOICES,
        help="task type (default: %(default)s)",
    )
    parser.add_argument("--prompt", help="user prompt (default: the task's own)")


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (NIMSamplingParams; unset = the default)")
    group.add_argument("--temperature", type=float)
    group.add_argument("--top-p", type=float)
    group.add_argument("--top-k", type=int)
    group.add_argument("--min-p", type=float)
    group.add_argument("--presence-penalty", type=float)
    group.add_argument("--frequency-penalty", type=float)
    group.add_argument("--repetition-penalty", type=float)
    group.add_argument("--max-tokens", type=int)
    group.add_argument("--min-tokens", type=int)
    group.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    group.add_argument("--seed", type=int)
    group.add_argument("--ignore-eos", action="store_true", default=None)
    group.add_argument("--logprobs", type=int)
    group.add_argument(
        "--guided-choice", action="append", help="allowed output (repeatable; guided decoding)"
    )
    group.add_argument("--guided-regex", help="regular expression the output must match")
    group.add_argument("--guided-json", help="JSON schema (text, or @file.json)")
    group.add_argument("--guided-grammar", help="EBNF grammar (text, or @file)")
    group.add_argument(
        "--media-io-kwargs",
        metavar="JSON",
        help="server-side media loading options, a JSON object (or @file), e.g. '{\"fps\": 2}'",
    )
    group.add_argument(
        "--mm-processor-kwargs",
        metavar="JSON",
        help="server-side multimodal processor options, a JSON object (or @file)",
    )


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("deployment (NIMConfig; unset = the default)")
    group.add_argument(
        "--api-key",
        dest="nvidia_api_key",
        help="NGC API key (default: $NGC_API_KEY; prefer the variable, argv is visible to ps)",
    )
    group.add_argument("--image-name", help="NIM image name (default: cosmos-reason1-7b)")
    group.add_argument("--tag", help="image tag (default: latest)")
    group.add_argument("--registry", help="registry path (default: nvcr.io/nim/nvidia)")
    group.add_argument("--port", type=int, help="host port (default: 8000)")
    group.add_argument("--host", help="host address to publish on (default: 127.0.0.1)")
    group.add_argument("--shm-size", help="shared memory, Docker syntax (default: 32GB)")
    group.add_argument("--max-model-len", type=int, help="context length (default: 8192)")
    group.add_argument(
        "--cache-dir", dest="local_cache_dir", help="host cache dir (default: ~/.cache/nim)"
    )
    group.add_argument(
        "--no-reuse",
        dest="use_existing_container",
        action="store_false",
        default=None,
        help="do not reuse a running container of the same name",
    )
    group.add_argument(
        "--replace",
        dest="auto_kill_existing_container",
        action="store_true",
        default=None,
        help="remove an existing container of the same name first",
    )
    group.add_argument(
        "--no-logs",
        dest="stream_logs",
        action="store_false",
        default=None,
        help="do not stream container logs while waiting",
    )
    group.add_argument("--force-pull", action="store_true", default=None, help="always pull")
    group.add_argument("--run-id", help="Datature Vi run whose weights to deploy")
    group.add_argument("--ckpt", help="checkpoint of --run-id (default: latest)")
    group.add_argument("--model-save-path", help="where Vi models are saved (~/.vi/models)")
    group.add_argument("--model-path", help="local Hugging Face checkpoint directory to serve")
    group.add_argument("--served-model-name", help="name to serve the model as")
    group.add_argument(
        "--overwrite", action="store_true", default=None, help="re-download existing weights"
    )
    group.add_argument(
        "--merge-adapter",
        action="store_true",
        default=None,
        help=(
            "merge a LoRA/PEFT adapter into the weights before serving "
            "(pip install 'nim-async[merge]')"
        ),
    )
    group.add_argument(
        "--gpus",
        help="'all', a count, comma-separated device ids, groups per replica separated by ';' "
        "(0,1;2,3), or 'none' (default: all)",
    )
    group.add_argument("--startup-timeout", type=float, help="seconds to wait for readiness")
    group.add_argument(
        "--replicas",
        type=int,
        help="containers of the same image and config on ports PORT .. PORT+N-1, one GPU each "
        "with --gpus all, --gpus 0,1;2,3 for explicit groups (default: 1)",
    )
    group.add_argument("--secret-key", help="Vi secret key (default: $DATATURE_VI_SECRET_KEY)")
    group.add_argument(
        "--organization-id", help="Vi organization (default: $DATATURE_VI_ORGANIZATION_ID)"
    )
    group.add_argument("--endpoint", help="Vi API base URL")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """Build the ``nim-async`` argument parser (all subcommands)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Deploy NVIDIA NIM vision-language containers and run phrase grounding / VQA "
            f"against them. Start with `{PROG} demo` (no GPU needed)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_container_commands(sub)
    _add_prediction_commands(sub)
    _add_tool_commands(sub)
    return parser


def _add_container_commands(sub: _Subparsers) -> None:
    p = sub.add_parser("deploy", help="pull and start a NIM container, wait until it is ready")
    _add_config_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    k8s = _add_kubernetes_arguments(p)
    k8s.add_argument(
        "--port-forward",
        action="store_true",
        help="forward 127.0.0.1:PORT to a ready pod (with --replicas N: PORT+i to pod i) and "
        "keep it open until Ctrl-C",
    )
    k8s.add_argument("--url", help="the URL the NIM is reachable at from here (NodePort, ingress)")
    p.set_defaults(handler="deploy:deploy")

    p = sub.add_parser("stop", help="stop and remove a NIM container")
    p.add_argument(
        "name", type=_container_name, help="container name (served_model_name or image_name)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_kubernetes_arguments(p)
    p.set_defaults(handler="stop:stop")

    p = sub.add_parser("ps", help="list the NIM containers nim-async manages")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_kubernetes_arguments(p)
    p.set_defaults(handler="ps:ps")


def _add_kubernetes_arguments(parser: argparse.ArgumentParser) -> Any:
    group = parser.add_argument_group("Kubernetes (nim-async[kubernetes])")
    group.add_argument(
        "--kubernetes",
        action="store_true",
        help="a NIMService (NIM Operator installed) or a Deployment + Service, not Docker",
    )
    group.add_argument("--namespace", default="default", help="namespace (default)")
    group.add_argument("--context", help="kubeconfig context (the current one)")
    group.add_argument("--kubeconfig", help="kubeconfig path ($KUBECONFIG or ~/.kube/config)")
    return group


def _add_prediction_commands(sub: _Subparsers) -> None:
    p = sub.add_parser("predict", help="run one prediction, streaming tokens to the terminal")
    p.add_argument("image", help="image path or URL")
    _add_task_arguments(p)
    p.add_argument("--json", action="store_true", help="print the full response as one JSON line")
    p.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    p.add_argument("--draw", metavar="OUT.png", help="write the image with boxes and labels")
    p.add_argument("--coco", metavar="OUT.json", help="write the grounding as COCO-style JSON")
    _add_nim_arguments(p)
    _add_sampling_arguments(p)
    p.set_defaults(handler="predict:predict")

    p = sub.add_parser(
        "batch",
        help="score many images; one JSON line per input, resumable",
        description=(
            "Score every image of DIR_OR_LIST (a directory, a text file of paths/URLs, or '-' "
            "for stdin). Each input ends as one JSON line in --out, appended and flushed as it "
            "finishes; --resume skips inputs already recorded. --out must be a regular file "
            "(devices, directories, FIFOs and /proc, /sys, /dev are refused); --overwrite and "
            "--retry-errors replace it atomically."
        ),
        epilog=(
            "exit status: 0 every input succeeded; 1 an input failed (in this run, or an error "
            "record of an earlier run kept by --resume) or an error stopped the batch (one line "
            "on stderr naming the cause, e.g. --out is not a regular file, cannot be written, "
            "or the disk is full); 2 usage error; 130 interrupted (Ctrl-C; rerun with --resume)."
        ),
    )
    p.add_argument("inputs", metavar="DIR_OR_LIST", help="directory, list file, or '-'")
    _add_task_arguments(p)
    p.add_argument("--out", default="results.jsonl", help="JSON Lines output (%(default)s)")
    p.add_argument("--resume", action="store_true", help="skip inputs already in --out")
    p.add_argument(
        "--retry-errors",
        action="store_true",
        help="with --resume: drop error records from --out and run those inputs again",
    )
    p.add_argument("--overwrite", action="store_true", help="start --out afresh")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (32)")
    p.add_argument(
        "--retries",
        default=2,
        type=_non_negative,
        help="retries per input on 429/502/503/504, refused connections and broken streams: "
        "at most 1 + RETRIES sends per input (2)",
    )
    p.add_argument("--ordered", action="store_true", help="write lines in input order")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--coco", metavar="OUT.json", help="also export groundings as COCO JSON")
    _add_nim_arguments(p)
    _add_sampling_arguments(p)
    p.set_defaults(handler="batch:batch")


def _add_tool_commands(sub: _Subparsers) -> None:
    sub.add_parser(
        "emulate",
        help="serve the NIM HTTP API from the embedded emulator (not a model); see emulate --help",
        add_help=False,
    )
    p = sub.add_parser(
        "emulator-image", help="build the emulator container image (for Docker tests)"
    )
    p.add_argument(
        "--tag", default="nim-async-emulator:latest", help="image reference (%(default)s)"
    )
    p.add_argument("--quiet", action="store_true", help="print only the image id")
    p.set_defaults(handler="emulator_image:emulator_image")

    sub.add_parser(
        "bench", help="load-test a NIM (or the emulator); see bench --help", add_help=False
    )

    p = sub.add_parser(
        "demo",
        help="the whole product on a laptop: emulator, grounding, VQA, annotated image",
        description=(
            "Without --url, start the embedded emulator in-process (an emulator, not a model), "
            "generate a sample image, run phrase grounding (streaming) and VQA on it, print the "
            "results and write the annotated image. With --url, use that NIM instead."
        ),
    )
    p.add_argument("--url", help="base URL of a real NIM (default: the embedded emulator)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="served model name (%(default)s)")
    p.add_argument("--out", default="nim-async-demo.png", help="annotated image (%(default)s)")
    p.add_argument("--image", help="use this image instead of the generated sample")
    p.add_argument(
        "--question",
        default="How many shapes are there?",
        help="VQA question (%(default)s)",
    )
    p.set_defaults(handler="demo:demo")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nim-async")
    except PackageNotFoundError:
        return "unknown"
