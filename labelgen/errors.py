"""Errors fkd-labelgen reports to the user as a clean message (no traceback).

``exit_code`` follows argparse: 2 for input the user must change (bad images, a store made with
other settings), 1 for a run that failed on its own (a shard that kept failing).
"""

from __future__ import annotations

from dataclasses import dataclass


class LabelgenError(Exception):
    """A failure with a message meant for the user."""

    exit_code = 1


@dataclass(frozen=True)
class BadImage:
    """An image that could not be decoded, and why (the store metadata keeps these)."""

    image_id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"image_id": self.image_id, "reason": self.reason}


class InputError(LabelgenError):
    """The data or the options must change before the run can go on."""

    exit_code = 2


class BadImagesError(InputError):
    """Unreadable images were found and --skip-bad was not given."""

    SKIP_HINT = "fix or remove them, or pass --skip-bad to leave them out of the store (it records them in its metadata)"

    def __init__(self, bad: list[BadImage], scope: str, hint: str = SKIP_HINT, shown: int = 20):
        """``scope`` says where they were looked for, e.g. '14 images' -> '2 of 14 images cannot be read'."""
        self.bad = bad
        lines = [f"  {b.image_id}: {b.reason}" for b in bad[:shown]]
        if len(bad) > shown:
            lines.append(f"  ... and {len(bad) - shown} more")
        super().__init__(f"{len(bad)} of {scope} cannot be read:\n" + "\n".join(lines) + f"\n{hint}")


class ShardFailedError(LabelgenError):
    """A shard failed on every allowed attempt; the shards finished so far stay in the store."""
