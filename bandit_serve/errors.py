"""Every error bandit-serve raises on purpose.

::

    BanditServeError                  base of all library errors
    ├── ConfigError (ValueError)      a config or scenario file is malformed; names file and field
    ├── PolicyInputError (ValueError) arm statistics of the wrong shape or value reached a policy
    ├── UnknownExperimentError (KeyError)
    └── StoreError (ConnectionError)  the state backend (Redis) could not be reached or failed;
                                      the call changed nothing it reported, retry it

Messages are whole sentences that name the bad value.
"""

from __future__ import annotations

__all__ = [
    "BanditServeError",
    "ConfigError",
    "PolicyInputError",
    "StoreError",
    "UnknownExperimentError",
]


class BanditServeError(Exception):
    """Base class of every error raised by bandit-serve."""


class ConfigError(BanditServeError, ValueError):
    """A config or scenario file is malformed.

    The message names the file, the field path and what is wrong, one line per problem.
    """


class PolicyInputError(BanditServeError, ValueError):
    """Arm statistics given to a policy have the wrong shape or impossible values."""


class UnknownExperimentError(BanditServeError, KeyError):
    """No experiment of that name is configured."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown experiment"


class StoreError(BanditServeError, ConnectionError):
    """The state store failed (for Redis: unreachable, timed out, or refused a command)."""
