"""What every entry point (HTTP, `ask`, `batch`) accepts as text: valid Unicode that shows
something.

JSON can carry a lone surrogate (`"\\ud800"`), which is no Unicode character: the tokenizer,
UTF-8 output and Arrow all fail on it, so it is refused where the text comes in, naming the
field. A text is blank when no character of it is visible: whitespace, control characters and
invisible format characters (zero-width space, joiners, BOM, bidi marks) alone ask nothing.
`VISIBLE` is written so that Python's `re`, JSON Schema (ECMA 262) and Rust's regex read it the
same way: the OpenAPI schema states the very rule the service applies.
"""

from __future__ import annotations

import re

# One visible character: not whitespace, not a C0/C1 control, not an invisible format mark.
VISIBLE = (
    r"[^\s\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
    r"\u2066-\u206f\ufeff]"
)
_VISIBLE = re.compile(VISIBLE)
_SURROGATE = re.compile("[\ud800-\udfff]")


def is_blank(text: str) -> bool:
    """True when `text` has no visible character (empty, spaces, zero-width characters...)."""
    return _VISIBLE.search(text) is None


def unicode_problem(text: str) -> str | None:
    """Why `text` is not valid Unicode (the first lone surrogate and where), or None."""
    found = _SURROGATE.search(text)
    if found is None:
        return None
    return f"not valid Unicode: a lone surrogate \\u{ord(found.group()):04x} at {found.start()}"


def printable(text: str) -> str:
    """`text` as it can be written out (UTF-8, JSON, Arrow): a lone surrogate as `\\udXXX`."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
