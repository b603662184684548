"""The parts of ``bench/migrate.py`` (the script that runs them, with its options, is there):

* :mod:`migrating.methods` — the plan's scripts (a), the psql binary pipe (b) and the floor of
  the Migrator (d), each on the same legacy database, and emptying their targets;
* :mod:`migrating.corpus` — the real-text legacy database.

What other scripts share too (reports, JSON, peak RSS) is in ``bench/common.py``.
"""
