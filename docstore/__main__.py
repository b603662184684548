"""``python -m docstore`` runs the CLI."""

from docstore.cli import app

app()
