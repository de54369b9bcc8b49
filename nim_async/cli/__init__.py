"""The ``nim-async`` command.

Subcommands: ``deploy``, ``stop``, ``ps``, ``predict``, ``batch``, ``emulate``,
``emulator-image``, ``bench`` and ``demo``; each has ``--help``. Commands that talk to a NIM take
``--url`` (or ``--host``/``--port``). Options mirror :class:`nim_async.NIMConfig` and
:class:`nim_async.NIMSamplingParams`.

The parser is :mod:`nim_async.cli.parser`; each command is one module here
(:mod:`~nim_async.cli.deploy`, :mod:`~nim_async.cli.stop`, :mod:`~nim_async.cli.ps`,
:mod:`~nim_async.cli.predict`, :mod:`~nim_async.cli.batch`, :mod:`~nim_async.cli.emulate`,
:mod:`~nim_async.cli.emulator_image`, :mod:`~nim_async.cli.bench`, :mod:`~nim_async.cli.demo`),
imported only when it runs, so that ``nim-async --help`` stays fast.

User errors (any :class:`nim_async.errors.NIMError` or ``ValueError``) print one clear line on
stderr and exit with status 1; usage errors exit with 2; Ctrl-C exits with 130. SIGTERM and
SIGHUP during ``deploy`` cancel it like Ctrl-C (removing the container it created) and exit
with 143 and 129.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, cast

from nim_async.cli.parser import (
    DELEGATED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    PROG,
    build_parser,
)

__all__ = ["build_parser", "iter_inputs", "main"]

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def iter_inputs(spec: str) -> Iterator[str]:
    """Yield the inputs of ``nim-async batch`` lazily (see :func:`nim_async.cli.batch.iter_inputs`).

    Args:
        spec: A directory, a list file, or ``-`` for stdin.
    """
    from nim_async.cli.batch import iter_inputs as batch_inputs

    return batch_inputs(spec)


def _handler(name: str) -> Handler:
    """The coroutine function ``"module:function"`` of :mod:`nim_async.cli` names."""
    module, _, function = name.partition(":")
    return cast(Handler, getattr(importlib.import_module(f"nim_async.cli.{module}"), function))


def _delegate(command: str, argv: list[str]) -> int:
    module = importlib.import_module(f"nim_async.cli.{command}")
    main_of: Callable[[list[str]], int] = module.main
    return int(main_of(argv))


def _one_line(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors) and type(exc).__name__ == "ValidationError":
        parts = []
        for error in errors():
            loc = ".".join(str(p) for p in error.get("loc", ())) or "value"
            parts.append(f"{loc}: {str(error.get('msg', '')).removeprefix('Value error, ')}")
        return "invalid sampling parameters: " + "; ".join(parts)
    text = str(exc).strip() or type(exc).__name__
    return text


def _run(handler: Handler, args: argparse.Namespace) -> int:
    import asyncio

    return int(asyncio.run(handler(args)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nim-async`` command.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 a failure (message on stderr), 2 usage, 130 Ctrl-C,
        143 / 129 SIGTERM / SIGHUP during ``deploy``.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        if arguments and arguments[0] in DELEGATED:
            return _delegate(arguments[0], arguments[1:])
        args = build_parser().parse_args(arguments)
        return _run(_handler(args.handler), args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as exc:
        from nim_async.errors import NIMError

        if isinstance(exc, NIMError | ValueError):
            sys.stderr.write(f"{PROG}: error: {_one_line(exc)}\n")
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
