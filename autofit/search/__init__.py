"""The search: escalation over strategies and shapes, driven and recorded by an Optuna study."""
