"""The drivers of the pure fold: the local batch loop and the Ray engine."""
