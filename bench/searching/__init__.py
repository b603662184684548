"""The parts of ``bench/search.py`` (the script that runs them, with its options, is there):

* :mod:`searching.corpora` — clustered, dev, noisy and near300: documents, queries, numpy's
  ground truth;
* :mod:`searching.passes` — a pass of searches over a corpus's queries (latency, recall,
  modes), default search() against today's defaults, the store's recall estimate;
* :mod:`searching.extras` — the clustered corpus's older checks: ``evaluate_recall()``, the
  overhead against raw asyncpg, ``--sweep``.

What other scripts share too (servers, corpora generators, ground truth, timing, reports) is
in ``bench/common.py``.
"""
