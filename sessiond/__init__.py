"""sessiond: a per-user session-state daemon.

Importing this package must stay cheap (no anyio): ``sessionctl`` imports
``sessiond.protocol`` on every invocation.
"""

__version__ = "0.1.0"
