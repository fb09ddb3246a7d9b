"""Errors that stop fkd-train before or during setup; the CLI prints them as one line and exits 2."""


class SetupError(Exception):
    """Bad arguments or inputs found while preparing a run (message says what to change)."""


class DataMismatchError(SetupError):
    """The images on disk are not the images the label store describes (message says what differs)."""
