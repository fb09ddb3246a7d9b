"""The teacher package's one error: its own module, so that every teacher module can raise it without
importing another (``pretrained`` and ``teachers`` used to import each other for it)."""


class TeacherError(ValueError):
    """A teacher that cannot be built as asked (bad name, spec, checkpoint or class count)."""
