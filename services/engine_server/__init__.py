"""`kb engine-serve`: our engine as its own process, behind an OpenAI-compatible API."""
