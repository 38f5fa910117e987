"""Batch ingestion jobs (issue 5): one code path for the in-process runner and Celery workers."""
