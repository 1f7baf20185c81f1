"""Type hints for composites with several outputs."""

from apache_beam.typehints.decorators import IOTypeHints


def multi_output_hints(input_type: type) -> IOTypeHints:
    """Type hints for a composite whose ``expand`` returns a NamedTuple/dict of PCollections.

    Beam reads ``expand``'s return annotation as an output hint and warns that it is not a
    PCollection; declaring only the input type keeps the annotation for readers and silences that.
    """
    return IOTypeHints.empty().with_input_types(input_type)
