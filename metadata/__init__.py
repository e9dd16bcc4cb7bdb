"""Placeholder package: built by a later issue (see docs/roadmap in the README)."""
