"""``fkd-labels merge``: join stores generated in parts into one.

Parts must hold the same labels recipe (every setting but the bookkeeping, the image count, the
shard size and the data fingerprint) and disjoint image ids; the merged store lists the parts'
images in the order the parts are given, re-chunked into shards of ``--shard-size`` (default: the
first part's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..store import LabelStore, Manifest, copy_meta
from .builder import image_list_fingerprint, iter_records, prepare_output, refuse_pair_renumbering, write_store
from .differences import describe_differences
from .errors import LabelsError
from .subset import SubsetSpec, select


def merge_stores(
    sources: "list[str | Path]",
    out: "str | Path",
    shard_size: "int | None" = None,
    subset: "SubsetSpec | None" = None,
    overwrite: bool = False,
) -> Manifest:
    """Write ``out``: the images of every store in ``sources`` (each restricted to ``subset``)."""
    if len(sources) < 2:
        raise LabelsError("merge needs at least two stores")
    stores = [LabelStore(s, payload=None) for s in sources]  # labels or embeddings: the builder writes either
    first = stores[0]
    for path, store in zip(sources[1:], stores[1:]):
        details = describe_differences(first.meta, store.meta)
        if details:
            raise LabelsError(f"{path} was made with other settings than {sources[0]} ({details}); only parts of one run can be merged")
    for path, store in zip(sources, stores):
        refuse_pair_renumbering(store.meta, path, "merging it")
    prepare_output(out, overwrite, sources)
    selections = [select(s, subset) if subset is not None else np.arange(len(s)) for s in stores]
    ids: list[str] = []
    labels: list[int] = []
    owner: dict[str, Path] = {}
    clashes: list[str] = []
    for path, store, chosen in zip(sources, stores, selections):
        store_ids, store_labels = store.image_ids, store.labels
        for i in chosen:
            image_id = store_ids[i]
            if image_id in owner:
                clashes.append(f"{image_id!r} ({owner[image_id]} and {path})")
            owner.setdefault(image_id, Path(path))
            ids.append(image_id)
            labels.append(int(store_labels[i]))
    if clashes:
        raise LabelsError(
            f"{len(clashes)} images are in more than one store (first: {', '.join(clashes[:3])}); "
            "merge joins disjoint parts only"
        )
    bad_images = [b for s in stores for b in s.meta.bad_images]
    meta = copy_meta(
        first.meta,
        num_images=len(ids),
        shard_size=shard_size if shard_size is not None else first.meta.shard_size,
        data_fingerprint=image_list_fingerprint(ids, labels),
        bad_images=bad_images,
    )
    records = (r for store, chosen in zip(stores, selections) for r in iter_records(store, chosen))
    return write_store(out, meta, records, desc="merging")
