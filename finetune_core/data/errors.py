"""Errors raised by the data layer."""

from __future__ import annotations


class IngestError(Exception):
    """An ingest could not be done. The message says what is wrong and what to do.

    A failed ingest registers no dataset and leaves no files behind.
    """


class DatasetNotFound(LookupError):
    """No dataset with that id or name exists in the workspace (or its files are gone)."""
