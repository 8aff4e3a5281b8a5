"""Training and scoring the captioner: ``photocap train``, ``photocap evaluate``, ``photocap
ensemble``.

* :mod:`~photocap.training.config` - what decides a run, and its events.
* :mod:`~photocap.training.run` - a run from start to end (:func:`~.run.iter_train`).
* :mod:`~photocap.training.stages` - the stages as a table, and the loop any stage runs.
* :mod:`~photocap.training.features` - photos and captions as tensors; the feature cache.
* :mod:`~photocap.training.cider` - CIDEr-D and BLEU-4 in-process (rewards, epoch choice).
* :mod:`~photocap.training.evaluation` - the standard metrics (pycocoevalcap) on a split.
* :mod:`~photocap.training.ensembles` - model files from model files: ensembles, shipping copies.

Captioning never imports this package.
"""
