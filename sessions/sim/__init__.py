"""A discrete-event simulator comparing the cache policies on agent workloads."""
