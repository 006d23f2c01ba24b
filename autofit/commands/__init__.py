"""One thin click function per command over an `*Args` dataclass that validates its own flags
(collect-then-raise in __post_init__, litgpt's TrainArgs is the model); cli.py assembles the group."""
