"""Cluster metadata: the image, its commands, topic configs and the stores that hold it."""
