"""The names of the FKD label quantization schemes (``fkd.payload.quantize`` implements them), apart from
the codecs so that command lines can list the choices without importing torch."""

from __future__ import annotations

from enum import Enum


class Scheme(str, Enum):
    """The FKD label quantization schemes (plus the uncompressed reference ``full``)."""

    HARDENING = "hardening"
    SMOOTHING = "smoothing"
    MARGINAL_SMOOTHING = "marginal-smoothing"
    MARGINAL_RENORM = "marginal-renorm"
    FULL = "full"

    @classmethod
    def parse(cls, value: "str | Scheme") -> "Scheme":
        """Accept a Scheme or its name (underscores allowed); raise ValueError listing the choices."""
        if isinstance(value, Scheme):
            return value
        name = str(value).strip().lower().replace("_", "-")
        for scheme in cls:
            if scheme.value == name:
                return scheme
        choices = ", ".join(s.value for s in cls)
        raise ValueError(f"unknown label scheme {value!r}; choose one of: {choices}")


SCHEMES: tuple[str, ...] = tuple(s.value for s in Scheme)
