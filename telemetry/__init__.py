"""The pipeline's own Prometheus metrics, exported from the SDK worker processes (bottom layer, Beam-free)."""
