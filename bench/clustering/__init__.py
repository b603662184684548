"""The parts of ``bench/citus.py`` (the script that runs them, with its options, is there):

* :mod:`clustering.setup` — the cluster (an existing coordinator, or one
  ``scripts/citus-cluster`` makes), the single node beside it, the corpus, and the
  :class:`~clustering.setup.Bench` every phase reads;
* :mod:`clustering.cpu` — CPU seconds each PostgreSQL server uses per call, from ``/proc``;
* :mod:`clustering.phases` — the measurements, in the order the script runs them: bulk load,
  one-source search, fanned-out ANN search (with Citus's connection cache at its default and
  raised), the query vector printed into every shard's SQL against sent once, exact search.

What other scripts share too (servers, corpora, timing, reports) is in ``bench/common.py``.
"""
