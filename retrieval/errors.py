"""Errors retrieval raises on bad input; each message says what is wrong and what to do.

They are ValueErrors, so callers that only care about "bad input" need not know them all; the
CLI reports any `RetrievalError` as one line instead of a traceback.
"""


class RetrievalError(ValueError):
    """Bad input to retrieval (corpus, model name, index type, index directory)."""


class CorpusError(RetrievalError):
    """A corpus that cannot be read: missing, empty, unreadable, malformed, duplicate ids."""


class EmbedderLoadError(RetrievalError):
    """The embedding model could not be loaded."""


class IndexFormatError(RetrievalError):
    """An index directory that is missing, corrupt, truncated, or built for something else."""
