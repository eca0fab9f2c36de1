"""Training infrastructure: configs, checkpoints, distributed helpers, optimizers, metrics, seeds.

Nothing here knows about a particular model; recipes combine these pieces. Import from the
submodules (``fastbind.training.checkpoint``, ``.config``, ``.distributed``, ...): the package
itself exports nothing, so importing one piece does not load the others.
"""
