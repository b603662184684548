"""``python -m docstore`` runs the CLI (as the ``docstore`` script: :mod:`docstore.launch`)."""

from docstore.launch import main

main()
