"""Memory models: the analytic peak from the architecture (analytic, arch) and its correction by
measured peaks (calibration). Pure: no file I/O, no CLI."""
