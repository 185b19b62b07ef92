"""sessiond: a per-user session-state daemon.

Importing this package must stay cheap (no anyio): ``sessionctl`` imports
``sessiond.protocol`` on every invocation.
"""

__version__ = "0.1.0"
# Defined here rather than in ``protocol`` (which re-exports it) so that
# ``sessionctl version`` can print it without importing msgspec.
PROTOCOL_VERSION = 3
