"""Pipeline templates for schedulers: typed parameters, launch/status/list/stop with JSON answers and exit codes."""
