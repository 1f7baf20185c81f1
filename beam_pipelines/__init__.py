"""Pipeline assembly: typed settings in, a Beam graph out; IO edges are injected."""
