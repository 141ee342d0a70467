"""nsrun's local launcher: a pool of worker processes, one per CPU core or per GPU (``nsrun.launch.local_pool``)."""
