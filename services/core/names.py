"""Naming rules shared by the API schemas and the chat schemas (kept import-light for the engine box)."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
