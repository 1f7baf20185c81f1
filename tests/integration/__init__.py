"""Integration tests against real local services on loopback, started by the session fixtures in conftest.py."""
