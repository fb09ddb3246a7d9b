"""Starting or joining Ray so that the workers import the installed packages, whatever the directory.

``ray.init`` puts the driver's working directory first on every worker's ``sys.path`` (Ray's job
config ``py_driver_sys_path``). From the folder above a clone, which is named ``fkd`` like the
package, the workers then imported the clone folder as a namespace package ``fkd`` instead of the
installed one. fkd-labelgen is an installed command: its workers need no directory on their path.
So Ray is started (or joined) from an empty temporary directory, which is what lands on the path, and
each worker changes to the driver's directory itself (``labelgen.pool``), where relative paths in
the options (``--checkpoint``, a factory's files) mean what they mean to the user.

A local instance runs its workers at the command's own priority. Ray's default (``worker_niceness``
15) suits a cluster whose nodes do nothing else, but on a shared machine it starves the labelling:
next to two training processes on 2 cores its worker got 6 % of a core. With 0, Ray adds nothing
to the niceness its workers inherit, so ``nice -n 10 fkd-labelgen ...`` still means what it says.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import chdir, contextmanager

import ray

LOCAL_CONFIG = {"worker_niceness": 0}
"""Ray's system config for a local instance: workers at the driver's niceness (Ray's default adds 15)."""


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
                ray.init(include_dashboard=False, logging_level=logging.WARNING, _system_config=LOCAL_CONFIG)
        try:
            yield
        finally:
            ray.shutdown()
