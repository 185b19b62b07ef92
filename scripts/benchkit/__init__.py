"""The project's benchmark, run as ``python scripts/bench.py``.

Modules, each one concept:

- ``settings``: executables, workload constants, deadlines, the profiles.
- ``stats``: median, spread and verdicts over rounds (pure functions).
- ``machine``: what the machine is, its steal time and load.
- ``procs``: the reaper and the server base; ``servers``: sessiond, redis-server.
- ``anchor``: whether the Redis anchor may run (hiredis), sessions as Redis hashes.
- ``workers``: client processes for the multi-client cases.
- ``measure``: a case's context and interleaved rounds.
- ``rows``: a result and how it is written; ``report``: header, table, JSON.
- ``cases``: the cases; ``registry``: their table, in print order.
- ``main``: the command line and the run.
"""
