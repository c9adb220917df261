"""What the models, the training code and the service share, without torch.

The web process imports this package and never ``generation/`` or ``training/`` (a test checks it), so that
it starts in a second and holds no model library in memory. ``generation/`` and ``training/`` import these
names from here: one definition each.

* :mod:`priorforge_spec.conditions`: condition kinds, label resolution, :class:`ConditionError`.
* :mod:`priorforge_spec.checkpoint`: the files of a checkpoint folder and how to read its ``config.json``.
* :mod:`priorforge_spec.backends`: each backend's conditions, model options and hyper-parameters
  (``backends.json``, written from the real classes by ``python -m training.backend_spec``), and the checks
  of a training request against them.
* :mod:`priorforge_spec.datasets` and :mod:`priorforge_spec.captions`: data set names, image extensions,
  the cache folder, and the ``captions.jsonl`` format.
* :mod:`priorforge_spec.png`: the generation parameters stored in a PNG.
* :mod:`priorforge_spec.precision`: the names of the numeric precisions.
* :mod:`priorforge_spec.experiments`: which decoders ignore the condition, and the attribute words a sweep varies.
"""
