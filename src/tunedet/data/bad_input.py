"""Counting, reporting, or refusing bad input.

Every reader sends each problem it meets (a box outside the image, an unknown
class, an unreadable image, a malformed annotation) to one `BadInputReport`:

- default mode: the item is repaired (boxes clipped) or skipped, the reason is
  counted, and its first occurrence (file + detail) is kept, so the run goes on
  and `summary()` says once, at the end of loading, what was changed;
- strict mode: the first problem raises `DataError` with a one-line message
  ``"<file>[:line | (annotation id ...)]: <reason>: <detail>"``.
"""

from __future__ import annotations

import logging
from collections import Counter

LOGGER = logging.getLogger("tunedet.data")

# Reasons used by the readers (a reason is just a string; these keep the spelling uniform).
BOX_CLIPPED = "box clipped to image"
ZERO_AREA_DROPPED = "zero-area box dropped"
UNKNOWN_CLASS_DROPPED = "unknown class dropped"
UNREADABLE_IMAGE_SKIPPED = "unreadable image skipped"
MISSING_IMAGE_SKIPPED = "missing image skipped"
MALFORMED_ANNOTATION_SKIPPED = "malformed annotation skipped"
IMAGE_FOUND_BY_STEM = "image found by stem"
SIZE_MISMATCH = "annotated image size differs from file (file size used)"


class DataError(ValueError):
    """Bad input met in strict mode, or an image that cannot be read; the message names the
    file (and line) and the reason.

    Raised in a DataLoader worker, torch re-raises it in the main process built from
    ``"Caught DataError in DataLoader worker process 0. Original Traceback ..."``; the
    original one-line message (the traceback's last line) is kept instead, so the error
    names the file, not the worker.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        text = str(message)
        if text.startswith("Caught ") and "DataLoader worker" in text:
            _, _, original = text.rstrip().splitlines()[-1].partition(": ")
            text = original or text
        super().__init__(text, *args)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class BadInputReport:
    """Counts of repaired/skipped inputs by reason, with the first example of each.

    Args:
        strict: raise `DataError` on the first problem instead of counting it.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def record(self, reason: str, where: str, detail: str = "") -> None:
        """Count one problem. ``where`` is ``"file"``, ``"file:line"`` or ``"file (annotation id 7)"``."""
        example = _one_line(f"{where}: {detail}" if detail else where)
        if self.strict:
            raise DataError(_one_line(f"{where}: {reason}" + (f": {detail}" if detail else "")))
        self.counts[reason] += 1
        self.examples.setdefault(reason, example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def __len__(self) -> int:
        return self.total

    def summary(self) -> str:
        """One line per reason: ``"<count> x <reason> (first: <file>: <detail>)"``; empty if clean."""
        return "\n".join(
            f"{count} x {reason} (first: {self.examples[reason]})"
            for reason, count in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        )

    def log(self, source: str) -> None:
        """Log the summary once as a warning (called by a reader at the end of its construction)."""
        if self:
            LOGGER.warning(
                "%s: %d input problem(s) repaired or skipped:\n%s",
                source,
                self.total,
                self.summary(),
            )
