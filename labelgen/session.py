"""Starting or joining Ray so that the workers import the installed packages, whatever the directory.

``ray.init`` puts the driver's working directory first on every worker's ``sys.path`` (Ray's job
config ``py_driver_sys_path``). From the folder above a clone, which is named ``fkd`` like the
package, the workers then imported the clone folder as a namespace package ``fkd`` instead of the
installed one. fkd-labelgen is an installed command: its workers need no directory on their path.
So Ray is started (or joined) from an empty temporary directory, which is what lands on the path, and
each worker changes to the driver's directory itself (``labelgen.pool``), where relative paths in
the options (``--checkpoint``, a factory's files) mean what they mean to the user.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import chdir, contextmanager

import ray


@contextmanager
def ray_session(address: "str | None") -> Iterator[None]:
    """Use a Ray instance already initialized by the caller (the caller chose its workers' path);
    else join ``address`` (or RAY_ADDRESS) or start a local instance, and shut down what was started
    here. The empty directory lives as long as the session: a local Ray's processes run in it."""
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    with tempfile.TemporaryDirectory(prefix="fkd-labelgen-") as empty:
        with chdir(empty):
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(include_dashboard=False, logging_level=logging.WARNING)
        try:
            yield
        finally:
            ray.shutdown()
