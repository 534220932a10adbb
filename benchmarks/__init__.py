"""dqlitepy's benchmarks: ``python -m benchmarks`` runs the suite (see ``suite.py``).

Modules: ``suite`` (command line, rounds), ``systems`` (the clusters under test),
``workloads`` (what a client does), ``measure`` (client worker processes, one
measurement), ``report`` (medians, tables, plots). ``import_time.py`` and
``raft_transport.py`` are separate scripts.
"""
