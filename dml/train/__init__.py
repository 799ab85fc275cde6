"""The training wing: one run (:mod:`dml.train.run`), the LightningModule
(:mod:`dml.train.module`), its callbacks, checkpoint files, the DDP launch, LR schedules, the
allocator and the epoch seeds.

Nothing is imported here, so reading a checkpoint (:mod:`dml.train.checkpointing`) or an epoch
seed does not import Lightning.
"""
