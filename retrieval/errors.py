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


class ChangeError(RetrievalError):
    """A change that does not fit: an id given twice, added but indexed already with other
    content, updated or deleted but not indexed, a document with no text."""

    SHOWN = 5  # ids named in the message

    @classmethod
    def refuse(cls, ids: list[str], problem: str) -> None:
        """Raise one naming `ids` (the first few) when there are any."""
        if ids:
            shown = ", ".join(map(repr, ids[: cls.SHOWN])) + (
                " ..." if len(ids) > cls.SHOWN else ""
            )
            raise cls(f"{len(ids)} document(s) {problem}: {shown}")
