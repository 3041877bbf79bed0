"""hps search: YAML spaces -> Optuna studies, budget pruning, export. Imports trainers, never the reverse."""
