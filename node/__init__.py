"""The Raftka node process: HTTP data plane, replicas, metadata, periodic storage work."""
