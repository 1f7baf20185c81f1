"""Beam PTransforms of the clickstream pipeline; each module exposes one public composite."""
