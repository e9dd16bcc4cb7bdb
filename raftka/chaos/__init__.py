"""Partition-tolerance experiments: faults (nemeses), a queue workload, a history checker, reports."""
