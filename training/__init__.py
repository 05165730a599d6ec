"""Training pipeline: iSAID-layout data, synthetic mini-iSAID, training, fine-tuning, evaluation and export.

Modules, one job each: ``train_config`` (typed YAML config), ``trainer`` (:class:`~training.trainer.Trainer`:
``step()`` and ``run()``), ``runtime`` (device, torchrun, AMP, RNG), ``schedule`` (poly LR, per-iteration
batches), ``weights`` (model, class table and initial weights: ImageNet encoder or ``--init-from``),
``class_table`` (``classes.json``), ``train_log``, ``isaid`` (data and patch cache), ``synthetic`` /
``synthetic_painters`` (generated data), and the command lines ``train``, ``evaluate``, ``export_onnx``.
"""
