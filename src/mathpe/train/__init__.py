"""Training and experiment running: settings, model setup, the Trainer, one run, comparisons."""
