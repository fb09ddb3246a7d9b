"""The error ``fkd-labels`` reports as a clean message: a request the user must change."""

from __future__ import annotations


class LabelsError(Exception):
    """A refused request (impossible conversion, mismatched stores, existing output...).

    The message says what is wrong and what to do instead; the CLI prints it without a traceback
    and exits with status 2, like argparse does for bad arguments.
    """

    exit_code = 2
