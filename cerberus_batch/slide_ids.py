"""What a slide id may be: it names the slide's folders under the output and its table partitions."""

from __future__ import annotations

import re

# \A and \Z, not ^ and $: `$` also matches before a final newline, and "abc\n" is no folder name.
# The first character a letter or digit: refuses ".", ".." and hidden names.
_SAFE_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]*\Z")
SAFE_ID_RULE = "letters, digits, '.', '_', '-'; no path separators"


def is_safe_slide_id(slide_id: str) -> bool:
    """Whether `slide_id` is a safe folder name on every filesystem we write to."""
    return _SAFE_ID.match(slide_id) is not None
