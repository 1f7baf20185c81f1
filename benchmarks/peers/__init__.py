"""Peer implementations of the pipeline's per-record work on other Python streaming frameworks (issue 12)."""
