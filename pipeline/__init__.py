"""Pure computation for klrank: divergence expressions, validation, aggregation and Parquet I/O."""
