"""Close-match hints for one-line errors about names (datasets, models, strategies, fields, ...).

Every "unknown X" error in jaxtl is worded ``unknown X 'value' (did you mean 'y'?); choices: ...``
with the hint from here, so users see one shape of message wherever they mistype.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(value: object, choices: Iterable[str], n: int = 1) -> str:
    """``" (did you mean 'a'?)"`` for the closest choices, or ``""`` when none is close.

    Example:
      >>> did_you_mean("resnt18", ["resnet18", "vit"])
      " (did you mean 'resnet18'?)"
      >>> did_you_mean("zzz", ["resnet18", "vit"])
      ''
    """
    close = difflib.get_close_matches(str(value), list(choices), n=n)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
