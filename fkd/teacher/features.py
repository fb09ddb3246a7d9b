"""Teacher features for feature distillation: the one place that says which vector a "source" is.

``fkd-labelgen --target embedding`` stores them per crop; ``fkd-train``'s online feature
distillation computes them every step. Both go through ``create_feature_extractor`` (one model) or
``TeacherFeatures`` (a ``fkd.teacher.teachers.Teacher``: its members' own normalization and precision,
members concatenated), so a stored embedding and an online one are the same function of the crop.

Sources (``source``):

- ``pre-logits``: timm's ``forward_head(forward_features(x), pre_logits=True)``, the vector the
  classifier reads: after the global pooling *and* whatever timm's head applies before its final
  ``fc`` (a head norm, a ``head_hidden_size`` MLP, MobileNetV3's ``conv_head``).
- ``pooled``: the model's own global pooling of ``forward_features``, before anything else of the
  head: a ``pool()`` method where the model has one (timm's ViT and EVA: class token or token
  average, before ``fc_norm``), else the output of its ``global_pool`` or ``head.global_pool``
  module as ``forward_head`` calls it (ResNet, EfficientNet, MobileNet, ConvNeXt, RegNet, NFNet,
  ...). It equals ``pre-logits`` where the head adds nothing (ResNet, EfficientNet, RegNet, a ViT
  with class-token pooling) and differs where it does: ConvNeXt (``head.norm``, and the
  ``head.pre_logits`` MLP when ``head_hidden_size`` is set), a ViT with average pooling
  (``fc_norm``), MobileNetV3 (960 pooled values vs 1280 after ``conv_head``). Models that expose no
  pooling (e.g. MambaOut, the relative-position ViTs) are refused: use ``pre-logits`` or a module.
- a module name (``model.get_submodule(name)``, e.g. ``layer3``, ``head.pre_logits``,
  ``dense_1_relu``): the output of that module the first time the forward calls it, caught by a
  forward hook; the forward stops there, so layers after it cost nothing. Works for any
  ``nn.Module`` (``--teacher-module`` teachers without timm's API, projection heads of
  self-supervised checkpoints). Rule for its shape: (N, D) is taken as it is; (N, C, H, W) is
  averaged over H and W (global average pooling, assuming channels first as torch layers produce);
  anything else (token sequences (N, L, C), tuples) is refused, since which token or element is the
  feature is the model's business: name a module that pools, or use ``pooled``.
- ``feature-map``: timm's ``forward_features`` output unchanged, (N, C, H, W) for CNNs, (N, L, C)
  tokens for ViTs, (N, H, W, C) for some (MambaOut, Swin): for online distillation of spatial
  features. Not a vector, so it cannot be stored as an embedding.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .precision import teacher_precision
from .teachers import DataConfig, Teacher, factory_model

PRE_LOGITS = "pre-logits"
POOLED = "pooled"
FEATURE_MAP = "feature-map"
TIMM_SOURCES = (PRE_LOGITS, POOLED, FEATURE_MAP)
"""Sources defined by timm's API; any other source is a module name."""


class FeatureSourceError(ValueError):
    """A source the model cannot give (no timm API, no such module, an output that is not a vector)."""


class _Captured(Exception):
    """Raised by the capture hook to stop the forward once the wanted module has run."""


def module_names_hint(model: nn.Module, wanted: str = "") -> str:
    """A few of the model's module names for an error message: close matches of ``wanted``, else
    the last ones (where penultimate features live)."""
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(wanted, names, n=4, cutoff=0.5) if wanted else []
    shown = ", ".join(close or names[-5:])
    return f"{len(names)} modules; {'close matches' if close else 'the last ones'}: {shown}"


def _has_timm_api(model: nn.Module) -> bool:
    return callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))


def _pool_module(model: nn.Module) -> "nn.Module | None":
    """timm's global pooling module: ``global_pool`` (ResNet, EfficientNet, MobileNet) or
    ``head.global_pool`` (ConvNeXt, RegNet, NFNet, ClassifierHead models). ViT's ``global_pool`` is
    a string, not a module."""
    for name in ("global_pool", "head.global_pool"):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, nn.Module):
            return module
    return None


def _has_pool_method(model: nn.Module) -> bool:
    return callable(getattr(type(model), "pool", None))


def check_source(model: nn.Module, source: str, name: str = "the model") -> None:
    """Raise FeatureSourceError when ``model`` cannot give ``source`` (no forward needed: works on a
    model built on the meta device). Output shapes are checked by the first forward."""
    if not isinstance(source, str) or not source:
        raise FeatureSourceError(f"the feature source must be {', '.join(TIMM_SOURCES)} or a module name, got {source!r}")
    if source in TIMM_SOURCES:
        if not _has_timm_api(model):
            raise FeatureSourceError(
                f"{name} ({type(model).__name__}) has no timm forward_features/forward_head, so {source!r} is not defined for it: "
                f"name one of its modules instead ({module_names_hint(model)})"
            )
        if source == POOLED and not (_has_pool_method(model) or _pool_module(model) is not None):
            raise FeatureSourceError(
                f"{name} ({type(model).__name__}) exposes no pooling (no pool() method, no global_pool module): "
                f"use 'pre-logits' or a module name ({module_names_hint(model)})"
            )
        return
    try:
        model.get_submodule(source)
    except AttributeError:
        raise FeatureSourceError(f"{name} has no module {source!r} ({module_names_hint(model, source)})") from None


def as_vectors(output: object, what: str) -> torch.Tensor:
    """(N, D) features from a layer's output: (N, D) as it is, (N, C, H, W) averaged over H and W;
    FeatureSourceError for anything else."""
    if not isinstance(output, torch.Tensor):
        raise FeatureSourceError(f"{what} returns a {type(output).__name__}, not a tensor: name a module that returns one")
    if output.ndim == 2:
        return output
    if output.ndim == 4:
        return output.mean(dim=(2, 3))
    raise FeatureSourceError(
        f"{what} gives {tuple(output.shape[1:])} per image, neither a vector (D,) nor a map (C, H, W): "
        "name a module that pools, or use 'pooled' or 'pre-logits'"
    )


def capture(module: nn.Module, run: Callable[[], object]) -> object:
    """The output of ``module`` the first time ``run()`` calls it; ``run`` stops right there."""
    seen: list[object] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        seen.append(output)
        raise _Captured

    handle = module.register_forward_hook(hook)
    try:
        run()
    except _Captured:
        pass
    finally:
        handle.remove()
    if not seen:
        raise FeatureSourceError(f"the forward never called the {type(module).__name__} module: it yields no feature")
    return seen[0]


@dataclass
class FeatureExtractor:
    """``model``'s features at ``source`` for inputs as ``model`` takes them (already normalized):
    (N, D) float for every source but ``feature-map``. Build with ``create_feature_extractor``."""

    model: nn.Module
    source: str
    name: str = "the model"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        model, source = self.model, self.source
        what = f"{self.name} {source!r}"
        if source == FEATURE_MAP:
            return model.forward_features(x)
        if source == PRE_LOGITS:
            return as_vectors(model.forward_head(model.forward_features(x), pre_logits=True), what)
        if source == POOLED:
            if _has_pool_method(model):
                return as_vectors(model.pool(model.forward_features(x)), what)
            pool = _pool_module(model)
            return as_vectors(capture(pool, lambda: model.forward_head(model.forward_features(x), pre_logits=True)), what)
        return as_vectors(capture(model.get_submodule(source), lambda: model(x)), f"{self.name} module {source!r}")


def create_feature_extractor(model: nn.Module, source: str, name: str = "the model") -> FeatureExtractor:
    """A callable images -> features of ``model`` at ``source`` (see the module docstring); raises
    FeatureSourceError, naming ``name``, when the model cannot give it."""
    check_source(model, source, name)
    return FeatureExtractor(model, source, name)


@dataclass
class TeacherFeatures:
    """A ``Teacher``'s features instead of its probabilities: float crops in [0, 1] at the
    teacher's input size in, float32 out, each member with its own mean/std and the teacher's
    precision. Vector sources give (N, D), the members' vectors concatenated in member order
    (``dims`` says each one's D); ``feature-map`` gives one member's map (ensembles are refused:
    maps of different shapes do not concatenate). Call under ``torch.inference_mode()`` (or
    ``no_grad``): the teacher is frozen."""

    teacher: Teacher
    source: str
    extractors: list[FeatureExtractor] = field(init=False)
    dims: tuple[int, ...] = field(init=False)  # per member; for feature-map the map's per-image shape
    shape: tuple[int, ...] = field(init=False)  # per image: (D,) or the map's shape

    def __post_init__(self) -> None:
        if self.source == FEATURE_MAP and len(self.teacher.members) > 1:
            raise FeatureSourceError(f"{FEATURE_MAP!r} takes a single teacher; this one has {len(self.teacher.members)} members")
        names = [d["name"] for d in self.teacher.describe()]
        self.extractors = [
            create_feature_extractor(member.model, self.source, f"teacher {name}") for member, name in zip(self.teacher.members, names)
        ]
        with torch.inference_mode():
            probe = [part.shape[1:] for part in self._parts(torch.zeros(1, 3, *self.teacher.data_config.input_size))]
        self.dims = tuple(int(s[0]) for s in probe) if self.source != FEATURE_MAP else tuple(probe[0])
        self.shape = (sum(self.dims),) if self.source != FEATURE_MAP else self.dims

    @property
    def dim(self) -> int:
        """D of the concatenated vector (vector sources)."""
        return self.shape[0]

    def _parts(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.teacher.prepare(x)
        with teacher_precision(self.teacher.precision, self.teacher.device):
            return [extract(member.normalize(x)).float() for member, extract in zip(self.teacher.members, self.extractors)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        parts = self._parts(x)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def check_architecture(model: nn.Module, source: str, name: str, input_size: "tuple[int, int] | None" = None) -> None:
    """``check_source``, then what the source gives, from a forward of a (1, 3, H, W) input on the
    meta device (shapes only, no arithmetic): a source that gives no vector is refused as the first
    real forward would. ``input_size`` defaults to the model's own (timm's data config)."""
    extractor = create_feature_extractor(model, source, name)
    try:
        size = input_size or DataConfig.of(model).input_size
        with torch.inference_mode():
            extractor(torch.zeros((1, 3, *size), device="meta"))
    except FeatureSourceError:
        raise
    except Exception:  # noqa: BLE001 - a model that cannot run on the meta device: the real forward decides
        return


def check_timm_architecture(
    model_name: str, source: str, num_classes: "int | None" = None, input_size: "tuple[int, int] | None" = None
) -> None:
    """``check_architecture`` on timm's ``model_name`` built on the meta device (no weights, no memory,
    milliseconds), so a command refuses a bad source before it starts workers that load the teacher.
    Best effort: a name timm cannot build offline (a hub name) or on the meta device is left to
    ``create_feature_extractor`` when the teacher is loaded."""
    import timm

    hub, _ = timm.models.parse_model_name(model_name)
    if hub is not None:
        return
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = _on_meta(lambda: timm.create_model(model_name, pretrained=False, **kwargs))
    if model is not None:
        check_architecture(model, source, f"teacher {model_name}", input_size)


def check_factory_architecture(
    spec: str, source: str, checkpoint: "str | None" = None, num_classes: "int | None" = None,
    input_size: "tuple[int, int] | None" = None,
) -> None:
    """The same for a ``--teacher-module`` factory (``pkg.mod:factory``), called as the workers will
    call it but on the meta device: no parameter memory, though the factory may read its checkpoint."""
    model = _on_meta(lambda: factory_model(spec, checkpoint, num_classes))
    if model is not None:
        check_architecture(model, source, f"teacher {spec}", input_size)


def _on_meta(build: Callable[[], nn.Module]) -> "nn.Module | None":
    """``build()`` on the meta device, or None when it fails there (any failure here is reported,
    properly, by the real load). Its warnings are silenced: loading real weights into meta
    parameters warns once per tensor."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build()
    except Exception:  # noqa: BLE001
        return None
