"""Run records: claiming and locking a run directory and writing its records
(:mod:`dml.runs.run_dir`), reading them back, finding the runs of sweeps and studies and naming
strategies (:mod:`dml.runs.records`). Train, tune, eval and report use them.

Nothing is imported here, and importing a module of this package registers nothing: the
``${dml.sweep_group:}`` and ``${dml.slurm_gpus:...}`` resolvers are registered by
:func:`dml.runs.run_dir.register_resolvers`, called where a run's config is composed and
resolved (``dml-train``, :func:`dml.train.run.train`).
"""
