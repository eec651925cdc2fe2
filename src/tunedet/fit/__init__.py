"""``tunedet fit``: a detector configured for a dataset by measurement (fingerprint → rules →
a small multi-fidelity search → the final training within a wall-time budget)."""
