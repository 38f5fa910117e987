"""Celery workers for batch ingestion (`kb worker`)."""
