"""Passwords out of anything autofit prints or records (storage URLs in messages, argv in run.json)."""

from __future__ import annotations

import re

# scheme://user:password@host: the password runs to the last @ of the word (hide too much, never too
# little), whether or not the rest of the URL parses.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(\S*)@")


def redact_text(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _USERINFO.sub(r"\1***@", text)
