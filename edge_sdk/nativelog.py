"""Keep native libraries' log lines (TensorFlow, LiteRT) out of the command line's output unless ``-v``.

TensorFlow's C++ logging obeys ``TF_CPP_MIN_LOG_LEVEL``, which must be set
before TensorFlow loads. Two lines do not obey it: LiteRT prints "Created
TensorFlow Lite XNNPACK delegate" once per process, on the first interpreter,
and the TFLite converter prints its "fully_quantize: ..." summary. They are
written by native code straight to file descriptor 2, so
:func:`native_stderr_silenced` points fd 2 at /dev/null for a short, known
stretch while Python's own ``sys.stderr`` (logging, progress bars) keeps
reaching the terminal through a duplicate of the real fd 2.

Nothing here is active unless :func:`quiet_native_logs` was called (the CLI
does, without ``-v``); a library user sees exactly what the libraries print.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

TF_LOG_LEVEL = "2"  # TF_CPP_MIN_LOG_LEVEL: 1 hides INFO, 2 also WARNING (oneDNN, absl, cpu_feature_guard)

_quiet = False


def quiet_native_logs() -> None:
    """From now on in this process (and its children): no TensorFlow INFO/WARNING lines, and the stretches
    wrapped in :func:`native_stderr_silenced` drop what native code writes to stderr.

    A ``TF_CPP_MIN_LOG_LEVEL`` the user set is kept.
    """
    global _quiet
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    _quiet = True


def is_quiet() -> bool:
    """Returns:
    Whether :func:`quiet_native_logs` was called in this process.
    """
    return _quiet


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """While inside (and only after :func:`quiet_native_logs`): native writes to fd 2 are dropped; Python's
    ``sys.stderr`` and the logging handlers writing to it still reach the real stderr. Not for long stretches:
    another thread's native stderr output in the meantime is dropped too.

    Returns:
        A context manager.
    """
    if not _quiet:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded, closed): nothing to protect
        yield
        return
    python_err = open(saved, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    old = sys.stderr
    moved = _retarget_handlers(old, python_err)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = python_err
    try:
        yield
    finally:
        python_err.flush()
        sys.stderr = old
        _retarget_handlers(python_err, old, moved)
        os.dup2(saved, 2)
        os.close(saved)
        python_err.close()


def _retarget_handlers(
    old: IO[str] | Any, new: IO[str], only: list[logging.StreamHandler[Any]] | None = None
) -> list[logging.StreamHandler[Any]]:
    """Point the stream handlers that write to ``old`` at ``new``; the ones moved."""
    handlers = only if only is not None else [
        h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.stream is old
    ]
    for h in handlers:
        h.setStream(new)
    return handlers
