"""``fkd-labels convert``: re-quantize a store without the teacher, where the source holds enough.

What each source keeps decides what it can become (C classes, stored K):

- ``full`` (all C probabilities): anything; the new payload is ``quantize.encode`` of the stored
  probabilities (``LabelCodec.stored_probabilities``: ``exp`` of a version-5 store's ln p), exactly
  what fkd-labelgen would have stored from them. ``full`` to ``full`` copies the values unchanged,
  log-probabilities staying log-probabilities (``copy_meta`` keeps the source's format version).
- a top-K payload (``marginal-*`` with K, or ``smoothing`` = top-1 with its probability):
  ``marginal-*`` with K' <= K (the K' largest stored probabilities), ``smoothing`` (p_max is the
  top-1 value), ``hardening``; ``full`` only when K = C. The two marginal schemes store the same
  payload, so converting between them with the same K only changes how it is decoded.
- ``hardening`` (the top-1 class only): only ``hardening``.

Embedding stores convert their storage dtype (``--to-dtype``): ``float16`` -> ``int8`` re-encodes
the stored vectors (``embedding_codec.encode``: each value within half its crop's scale of the
float16 value). ``int8`` -> ``float16`` is refused: it would double the size and restore nothing
int8 rounded away. Label options on an embedding store, and ``--to-dtype`` on a label store, are
refused with what the store holds.

Anything else is refused with what the source lacks. Boxes, flips, image ids, labels and sizes are
copied; the new store gets a new store id.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..payload import embedding_codec, quantize
from ..payload.embedding_spec import EMBEDDING_DTYPES
from ..payload.quantize import LabelCodec, Scheme, stored_top_k
from ..store import ImageLabels, LabelStore, Manifest, StoreMeta, copy_meta
from .builder import image_list_fingerprint, iter_records, prepare_output, refuse_pair_renumbering, write_store
from .errors import LabelsError
from .subset import SubsetSpec, select

DEFAULT_TOP_K = 5
MARGINAL = (Scheme.MARGINAL_SMOOTHING, Scheme.MARGINAL_RENORM)


@dataclass(frozen=True)
class Conversion:
    """A checked conversion: source scheme and stored K to target scheme and stored K."""

    source: Scheme
    source_k: int
    target: Scheme
    target_k: int
    num_classes: int
    codec: LabelCodec  # the source's: how its values decode

    @property
    def description(self) -> str:
        return self.target.value

    def meta_changes(self, meta: StoreMeta) -> dict[str, Any]:
        return {"scheme": self.target.value, "top_k": self.target_k}

    def convert(self, record: ImageLabels) -> ImageLabels:
        """The record with its payload re-quantized (boxes, flips and ids unchanged)."""
        if self.source is Scheme.FULL and self.target is Scheme.FULL:
            indices, values = None, record.values
        elif self.source is Scheme.FULL:
            payload = quantize.encode(self.codec.stored_probabilities(record.values), self.target, self.target_k)
            indices, values = payload.indices, payload.values
        elif self.source is Scheme.HARDENING:
            indices, values = record.indices, None
        else:
            indices, values = self._from_top_k(record.indices, record.values)
        return ImageLabels(
            record.index, record.image_id, record.label, record.height, record.width, record.boxes_fixed, record.flips,
            indices, values, record.fingerprint, views=record.views,
        )

    def _from_top_k(self, indices: np.ndarray, values: np.ndarray) -> "tuple[np.ndarray | None, np.ndarray | None]":
        if self.target is Scheme.FULL:  # K == C: the payload holds every class
            dense = np.zeros((len(indices), self.num_classes), dtype=np.float16)
            np.put_along_axis(dense, indices.astype(np.int64), values, axis=1)
            return None, dense
        # Rank by stored value; stable, so the writer's order (already descending, ties to the
        # lower class) is kept and the first K' columns are what encode() would have kept.
        order = np.argsort(-values.astype(np.float32), axis=1, kind="stable")
        keep = 1 if self.target in (Scheme.HARDENING, Scheme.SMOOTHING) else self.target_k
        ranked_indices = np.take_along_axis(indices, order[:, :keep], axis=1)
        ranked_values = np.take_along_axis(values, order[:, :keep], axis=1)
        return ranked_indices, None if self.target is Scheme.HARDENING else ranked_values


def plan_conversion(meta: StoreMeta, scheme: "str | Scheme", top_k: "int | None" = None) -> Conversion:
    """Check that a store with ``meta`` holds enough to become ``scheme`` with ``top_k``
    (None: the source's K for a top-K source, else 5); LabelsError says what is missing."""
    source, target = Scheme.parse(meta.scheme), Scheme.parse(scheme)
    classes = meta.num_classes
    source_k = stored_top_k(source, meta.top_k, classes)
    if top_k is None:
        top_k = source_k if source in MARGINAL else DEFAULT_TOP_K
    if top_k < 1:
        raise LabelsError(f"--top-k must be >= 1, got {top_k}")
    target_k = stored_top_k(target, top_k, classes)
    conversion = Conversion(source, source_k, target, target_k, classes, meta.label_codec())
    what = f"cannot convert {source.value} (K={source_k}) to {target.value}" + (f" with K={target_k}" if target in MARGINAL else "")
    if source is Scheme.FULL or target is Scheme.HARDENING:
        return conversion
    if source is Scheme.HARDENING:
        raise LabelsError(f"{what}: a hardening store keeps only each crop's top-1 class, no probabilities; it converts only to hardening")
    if target is Scheme.FULL:
        if source_k == classes:
            return conversion
        raise LabelsError(
            f"{what}: full needs all {classes} class probabilities per crop, the source keeps only the top {source_k}; "
            "regenerate with fkd-labelgen --scheme full"
        )
    if target in MARGINAL and target_k > source_k:
        raise LabelsError(
            f"{what}: the source keeps only the top {source_k} probabilities per crop; choose --top-k <= {source_k} "
            f"or regenerate with fkd-labelgen --top-k {target_k}"
        )
    return conversion


@dataclass(frozen=True)
class EmbeddingConversion:
    """A checked embedding conversion: stored dtype ``source`` to ``target``."""

    source: str
    target: str

    @property
    def description(self) -> str:
        return f"{self.target} embeddings"

    def convert(self, record: ImageLabels) -> ImageLabels:
        """The record with its embedding re-encoded as ``target`` (everything else unchanged)."""
        if self.source == self.target:
            return record
        payload = embedding_codec.encode(record.decoded_embedding().numpy(), self.target)
        return dataclasses.replace(record, embedding=payload.embedding, scales=payload.scales)

    def meta_changes(self, meta: StoreMeta) -> dict[str, Any]:
        return {"embedding": dataclasses.replace(meta.embedding, dtype=self.target)}


def plan_embedding_conversion(meta: StoreMeta, to_dtype: "str | None") -> EmbeddingConversion:
    """Check that an embedding store with ``meta`` can be stored as ``to_dtype`` (None: as it is)."""
    source = meta.embedding.dtype
    target = to_dtype or source
    if (source, target) == ("int8", "float16"):
        raise LabelsError("cannot convert int8 embeddings to float16: float16 cannot restore what int8 rounded away and would "
                          "only double the size; regenerate the store with float16 embeddings")
    if target not in EMBEDDING_DTYPES:
        raise LabelsError(f"unknown embedding dtype {target!r}; choose one of: {', '.join(EMBEDDING_DTYPES)}")
    return EmbeddingConversion(source, target)


def plan_store_conversion(
    path: "str | Path", meta: StoreMeta, scheme: "str | Scheme | None", top_k: "int | None", to_dtype: "str | None"
) -> "Conversion | EmbeddingConversion":
    """The conversion the options ask of the store at ``path``: label options for label stores
    (``--scheme``, ``--top-k``; default scheme: the source's), ``--to-dtype`` for embedding stores."""
    if meta.embedding is not None:
        if scheme is not None or top_k is not None:
            raise LabelsError(f"{path} holds {meta.describe_payload()}, not soft labels: --scheme and --top-k convert label "
                              "stores; convert an embedding store with --to-dtype")
        return plan_embedding_conversion(meta, to_dtype)
    if to_dtype is not None:
        raise LabelsError(f"{path} holds {meta.describe_payload()}, not embeddings: --to-dtype converts embedding stores; "
                          "convert a label store with --scheme and --top-k")
    return plan_conversion(meta, scheme or meta.scheme, top_k)


def convert_store(
    source: "str | Path",
    out: "str | Path",
    scheme: "str | Scheme | None" = None,
    top_k: "int | None" = None,
    subset: "SubsetSpec | None" = None,
    shard_size: "int | None" = None,
    overwrite: bool = False,
    to_dtype: "str | None" = None,
) -> Manifest:
    """Write ``out``: the (subset of the) store ``source`` re-quantized to ``scheme``/``top_k``
    (label stores) or re-encoded as ``to_dtype`` (embedding stores)."""
    store = LabelStore(source, payload=None)
    conversion = plan_store_conversion(source, store.meta, scheme, top_k, to_dtype)
    if subset is not None:
        refuse_pair_renumbering(store.meta, source, f"--subset {subset.describe()}")
    prepare_output(out, overwrite, [source])
    indices = select(store, subset) if subset is not None else np.arange(len(store))
    changes: dict = {**conversion.meta_changes(store.meta), "num_images": len(indices)}
    if shard_size is not None:
        changes["shard_size"] = shard_size
    if subset is not None:
        ids = store.image_ids
        changes["data_fingerprint"] = image_list_fingerprint([ids[i] for i in indices], store.labels[indices])
    meta = copy_meta(store.meta, **changes)
    records = (conversion.convert(r) for r in iter_records(store, indices))
    return write_store(out, meta, records, desc=f"converting to {conversion.description}")
