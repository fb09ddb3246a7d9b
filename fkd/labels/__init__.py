"""``fkd-labels``: inspect, verify, show, convert, import, merge and subset label stores.

One module per command (info, verify, show, convert, import_fkd, merge); ``builder`` writes the
derived stores they produce and ``subset`` selects images by class or id. The package only reads
and writes stores through ``fkd.store``, so it never depends on ``labelgen`` or ``train``.
``show`` (matplotlib) and ``import_fkd`` are not imported here (the function ``import_fkd`` would
shadow its module).
"""

from .convert import convert_store, plan_conversion
from .errors import LabelsError
from .info import StoreInfo, store_info
from .merge import merge_stores
from .subset import StoreSubset, SubsetSpec, parse_subset
from .verify import VerifyReport, drop_bad_shards, verify_store

__all__ = [
    "LabelsError", "StoreInfo", "StoreSubset", "SubsetSpec", "VerifyReport", "convert_store", "drop_bad_shards",
    "merge_stores", "parse_subset", "plan_conversion", "store_info", "verify_store",
]
