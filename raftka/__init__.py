"""Raftka's public face: the Python client library and the `raftka` command line.

The producer, consumer and admin clients arrive with the node (see README, "Status").
"""

__version__ = "0.1.0"
