"""Reading and writing files: inputs scanned, outputs written and published atomically."""
