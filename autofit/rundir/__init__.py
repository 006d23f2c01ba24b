"""The run directory a search writes and every later command reads: one owner for each file.

    layout   where each file lives (RunDir), the lock, the identity that --resume checks
    records  probes.csv and boundaries.csv: append, replace, repair, read with every field checked
    best     best.yaml (the Winner) and run.json: the one writer and the one reader of each

    run = RunDir.existing("results/...")
    run.best(), run.probes(), run.boundaries(), run.run()
"""

from autofit.rundir.layout import SCHEMA_VERSION, RunDir, RunLock, check_resume

__all__ = ["SCHEMA_VERSION", "RunDir", "RunLock", "check_resume"]
