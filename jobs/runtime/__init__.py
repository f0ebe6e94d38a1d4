"""The process around a run: locks, signals and the structured events it logs."""
