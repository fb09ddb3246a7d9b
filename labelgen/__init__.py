"""fkd-labelgen (stage 1): teachers over M random crops per image, in parallel on Ray, into a label store.

``labelgen.cli`` parses the command line, ``labelgen.driver`` plans the store and writes it,
``labelgen.pool`` runs ``labelgen.worker.LabelWorker`` as Ray actors that label whole shards.
"""

from .driver import RunConfig, Summary, run
from .errors import BadImagesError, InputError, LabelgenError, ShardFailedError
from .messages import LabelSettings

__all__ = ["BadImagesError", "InputError", "LabelSettings", "LabelgenError", "RunConfig", "ShardFailedError", "Summary", "run"]
