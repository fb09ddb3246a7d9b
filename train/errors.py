"""Errors that stop fkd-train before or during setup; the CLI prints them as one line and exits 2 (so
it does ``fkd.data.errors.ReplayError`` and ``DataMismatchError``, raised by the replay it shares)."""


class SetupError(Exception):
    """Bad arguments or inputs found while preparing a run (message says what to change)."""
