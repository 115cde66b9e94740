"""clipserve-batch: embed or score a whole dataset, against the HTTP service or in-process.

Resumable (re-run the same command), shardable (Cloud Run Jobs tasks), and loses no row:
see batch.cli for the commands and README "Batch jobs" for usage.
"""
