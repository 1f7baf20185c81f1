"""The local stack without Docker: each component a real process on loopback, state under ``.stack/``."""
