"""The REST resources, one Blueprint per module: health, sessions, control, stats, trials, metrics, docs."""
