"""``fkd-labels``: inspect, verify, show, convert, import, export, merge and subset label stores.

One module per command (info, verify, show, convert, import_fkd, export_fkd, merge); ``builder``
writes the derived stores they produce, ``subset`` selects images by class or id and ``fkd_format``
holds the official FKD layout both FKD commands share. The package only reads and writes stores
through ``fkd.store``, so it never depends on ``labelgen`` or ``train``. Nothing is imported here:
importing a module of the package (the CLI, to answer ``--help``) must not load torch and h5py.
"""
