"""``make bench``: IOC's throughput, CPU, memory and latency against baselines measured in the same run."""
