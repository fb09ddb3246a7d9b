"""Errors of replaying stored crops: a setting that cannot work, or images that are not the ones the
store describes. Their message is one line saying what to change; fkd-train prints it and exits 2."""


class ReplayError(ValueError):
    """A replay or augmentation setting that cannot work (message says what to change)."""


class DataMismatchError(ReplayError):
    """The images on disk are not the images the label store describes (message says what differs)."""
