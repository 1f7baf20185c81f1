"""Ingestion side: event generation and (later) the publishing service."""
