"""Element types for multi-output steps, so tagged outputs get RowCoder instead of pickling."""

import apache_beam as beam


def typed(pcoll: beam.PCollection, element_type: type) -> beam.PCollection:
    """Declare the element type of a tagged output (``with_outputs`` leaves them as ``Any``)."""
    pcoll.element_type = element_type
    return pcoll
