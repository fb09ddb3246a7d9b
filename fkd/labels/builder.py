"""Writing a derived store (convert, merge, subset, import-fkd) from a stream of per-image records.

Every command that produces a store goes through ``write_store``: records are grouped into shards of
``meta.shard_size``, compressed with the store's own codec and written with ``fkd.store``'s atomic
shard + manifest protocol under the store's write lock, so a derived store is indistinguishable from
one fkd-labelgen wrote and an interrupted command leaves an incomplete store that ``fkd-labels
verify`` reports as such.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.images import ImageEntry, ImageList
from ..store import (
    MANIFEST_NAME,
    ImageLabels,
    LabelStore,
    Manifest,
    PayloadLayout,
    ShardData,
    StoreMeta,
    ViewParams,
    compress_records,
    open_for_writing,
    remove_store,
    store_lock,
    write_shard,
)
from .errors import LabelsError


def prepare_output(out: "str | Path", overwrite: bool, sources: Iterable["str | Path"] = ()) -> Path:
    """Check that ``out`` may receive a new store before any work starts.

    Refuses an output that is one of the inputs (it would be deleted while being read), and an
    existing non-empty directory unless ``overwrite`` and it holds a store (whose manifest and shards
    are then removed; other files are left alone).
    """
    out = Path(out)
    for source in sources:
        if Path(source).resolve() == out.resolve():
            raise LabelsError(f"--out {out} is also an input; write the new store to another directory")
    if out.exists() and not out.is_dir():
        raise LabelsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise LabelsError(f"--out {out} already exists and is not empty; choose another --out or pass --overwrite")
        if not (out / MANIFEST_NAME).exists():
            raise LabelsError(f"--out {out} is not empty and holds no label store; refusing to overwrite it")
        remove_store(out)
    return out


def write_store(out: "str | Path", meta: StoreMeta, records: Iterable[ImageLabels], desc: str = "writing") -> Manifest:
    """Write ``meta.num_images`` records, in order, as a complete store at ``out`` (prepared with
    ``prepare_output``). The records' ``index`` fields are ignored: position defines the index."""
    out = Path(out)
    layout = meta.record_layout()
    pending: list[ImageLabels] = []
    shard = 0
    with store_lock(out):
        manifest = open_for_writing(out, meta)
        for record in tqdm(records, total=meta.num_images, desc=desc, unit="img", disable=None):
            if shard >= meta.num_shards:
                raise ValueError(f"more records than the {meta.num_images} images the new store's metadata declares")
            pending.append(record)
            start, stop = meta.shard_range(shard)
            if len(pending) == stop - start:
                manifest.shards[shard] = write_shard(out, meta, shard, _shard_data(layout, pending))
                manifest.save(out)
                pending, shard = [], shard + 1
    if shard != meta.num_shards or pending:
        raise ValueError(f"got fewer records than the {meta.num_images} images the new store's metadata declares")
    return manifest


def _shard_data(layout: PayloadLayout, records: list[ImageLabels]) -> ShardData:
    def stacked(name: str) -> "np.ndarray | None":
        arrays = [getattr(r, name) for r in records]
        return None if arrays[0] is None else np.stack(arrays)

    payload = (stacked(name) for name in layout.payload_names)
    views = None if records[0].views is None else ViewParams.stack([r.views for r in records])  # a reinforced store's, kept
    compressed = compress_records(layout, stacked("boxes_fixed"), stacked("flips"), *payload, views=views)
    return ShardData(
        image_ids=[r.image_id for r in records],
        labels=np.array([r.label for r in records], dtype=np.int64),
        sizes=np.array([(r.height, r.width) for r in records], dtype=np.int64).reshape(-1, 2),
        records=compressed,
        fingerprints=None if records[0].fingerprint is None else np.array([r.fingerprint for r in records], dtype=np.uint32),
    )


def refuse_pair_renumbering(meta: StoreMeta, source: "str | Path", what: str) -> None:
    """A store with stored Mixup/CutMix pairs names each partner by its store index: a store of
    other images (``what``: a subset, a merge) would pair crops with the wrong images."""
    if meta.augmentation is not None and meta.augmentation.mixes:
        raise LabelsError(f"{source} stores Mixup/CutMix pairs, whose partners are named by store index: {what} would pair crops "
                          "with other images; convert it whole, or relabel the images you want with fkd-labelgen")


def iter_records(store: LabelStore, indices: Iterable[int]) -> Iterator[ImageLabels]:
    """Read images ``indices`` of ``store`` in that order, keeping one shard open at a time
    (a reader otherwise keeps every shard it touched open)."""
    current = None
    for index in indices:
        shard = store.locate(int(index))[0]
        if shard != current:
            store.close()
            current = shard
        yield store.read(int(index))
    store.close()


def image_list_fingerprint(image_ids: list[str], labels: Iterable[int]) -> str:
    """The data fingerprint a store made from exactly these images would carry (fkd.data.images'
    definition), for derived stores that cover another image list than their source."""
    entries = [ImageEntry(i, int(label)) for i, label in zip(image_ids, labels)]
    return ImageList(Path("."), entries, []).fingerprint()
