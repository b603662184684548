"""The parts of ``bench/scale.py`` (the script that runs them, with its options, is there):

* :mod:`scaling.corpus` — the generated documents, and the Doc Server's searches over them;
* :mod:`scaling.storage` — (a) bytes a document, extrapolated to 1M / 10M;
* :mod:`scaling.throughput` — (b) one primary: searches/s, latency and CPU a search;
* :mod:`scaling.partition` — the LIST-partitioned copy of the database that (c) compares with;
* :mod:`scaling.plans` — docstore's search SQL run and EXPLAINed as docstore runs it;
* :mod:`scaling.cliff` — (c) the filtered-index cliff, flat table against partitions;
* :mod:`scaling.replica` — (d) a streaming replica: lag, visibility, routed reads.

What other scripts share too (servers, timing, closed-loop load, CPU meters) is in
``bench/common.py``.
"""
