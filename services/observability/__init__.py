"""Metrics, request ids and JSON logs (issue 7)."""
