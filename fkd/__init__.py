"""fkd: fast offline knowledge distillation (FKD) for image classifiers."""

__version__ = "0.1.0"
