"""The web UI's static files (static/): plain HTML, CSS and ES modules, served by services/api/routes/web.py.

A Python package only so that the files ship inside the wheel (package-data in pyproject.toml).
"""
