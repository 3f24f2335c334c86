"""Small shared utilities with no domain knowledge: atomic writes, cache paths, progress
and warnings, provenance of the environment, run interruption, locks, input checks."""
