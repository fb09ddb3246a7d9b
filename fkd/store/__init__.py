"""The label store: sharded HDF5 files plus a JSON manifest (see docs/FORMAT.md)."""

from .errors import StoreCorruptError, StoreError, StoreFormatError, StoreIncompleteError, StoreMismatchError, StorePayloadError
from .format import FORMAT_VERSION, MANIFEST_NAME, PAYLOADS, UNKNOWN_PRECISION, StoreMeta
from .integrity import file_sha256, shard_file_problem
from .layout import EmbeddingLayout, PayloadLayout, RecordLayout
from .manifest import Manifest, ShardInfo
from .reader import ImageLabels, LabelStore
from .views import ViewParams, ViewSpec
from .writer import (
    ShardData,
    compress_records,
    copy_meta,
    new_meta,
    open_for_writing,
    remove_store,
    store_lock,
    write_shard,
)

__all__ = [
    "FORMAT_VERSION", "MANIFEST_NAME", "PAYLOADS", "EmbeddingLayout", "ImageLabels", "LabelStore", "Manifest", "PayloadLayout",
    "RecordLayout", "ShardData", "ShardInfo", "StoreCorruptError", "StoreError", "StoreFormatError", "StoreIncompleteError",
    "StoreMeta", "StoreMismatchError", "StorePayloadError", "UNKNOWN_PRECISION", "ViewParams", "ViewSpec", "compress_records", "copy_meta", "file_sha256", "new_meta",
    "open_for_writing", "remove_store", "shard_file_problem", "store_lock", "write_shard",
]
