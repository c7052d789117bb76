"""One run on disk: configs, run directory, training, evaluation, scoring, resources."""
