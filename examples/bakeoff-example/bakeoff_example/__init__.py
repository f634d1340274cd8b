"""A worked bakeoff plugin: one task, one adapter for a training API of your own, one training loop.

- ``bakeoff_example.tasks:Spirals`` — a task (``bakeoff.Task``): three interleaved spirals, an MLP;
- ``bakeoff_example.adapters:MiniTrainerAdapter`` — an adapter (``bakeoff.Adapter``) that drives
  ``bakeoff_example.trainer.MiniTrainer``, standing in for an in-house training library;
- ``bakeoff_example.train:train`` — a plain training function, run as an adapter as it is.
"""
