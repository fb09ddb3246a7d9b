"""fkd-labelgen (stage 1): teachers over M random crops per image, in parallel on Ray, into a label store.

``labelgen.cli`` parses the command line, ``labelgen.checks`` refuses bad input before any work,
``labelgen.driver`` plans the store and writes it, ``labelgen.session`` starts or joins Ray,
``labelgen.pool`` runs ``labelgen.worker.LabelWorker`` as Ray actors that label whole shards.
Nothing is imported here, so that ``fkd-labelgen --help`` does not load torch or Ray.
"""
