"""How export failures are caught and reported: quietly, with their first line."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Exporters warn about deprecations and tracing details; the result says what matters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
