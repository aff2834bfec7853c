"""Every error bandit-serve raises on purpose.

::

    BanditServeError                   base of all library errors
    ├── ConfigError (ValueError)       a config or scenario file is malformed; names file and field
    ├── PolicyInputError (ValueError)  arm statistics of the wrong shape or value reached a policy
    ├── UnknownExperimentError (KeyError)
    ├── UnknownArmError (KeyError)     an arm name that the experiment does not have
    ├── ModelError                     the model of an arm raised or timed out
    ├── EndpointError (models.http)    a model endpoint gave no prediction (an arm's error)
    ├── ClientError (client)           the Python client's (ServiceUnavailable, ApiError, ...)
    ├── InputRejected (ValueError)     a request's inputs fit no active arm's contract (422)
    ├── ActionRefused                  an action that does not fit the experiment's state (409)
    └── StoreError (ConnectionError)   the state backend (Redis) could not be reached or failed;
                                       the call changed nothing it reported, retry it

Messages are whole sentences that name the bad value. A test walks every exception class
defined in the package and checks that it descends from :class:`BanditServeError`.
"""

from __future__ import annotations

__all__ = [
    "ActionRefused",
    "BanditServeError",
    "ConfigError",
    "InputRejected",
    "ModelError",
    "PolicyInputError",
    "StoreError",
    "UnknownArmError",
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


class _NamedKeyError(BanditServeError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else self.__class__.__doc__ or ""


class UnknownExperimentError(_NamedKeyError):
    """No experiment of that name is configured."""


class UnknownArmError(_NamedKeyError):
    """The experiment has no arm of that name."""


class ModelError(BanditServeError):
    """The model of an arm raised or timed out."""

    def __init__(self, experiment: str, arm: str, reason: str) -> None:
        super().__init__(f"the model of arm {arm!r} in experiment {experiment!r} failed: {reason}")
        self.experiment = experiment
        self.arm = arm
        self.reason = reason


class InputRejected(BanditServeError, ValueError):
    """A request's inputs do not fit the contract of an arm that could serve it (or the
    experiment's input schema): refused before any decision is logged."""


class ActionRefused(BanditServeError):
    """An action does not fit the experiment's state (HTTP 409), e.g. rolling back the
    baseline or promoting a rolled-back arm."""


class StoreError(BanditServeError, ConnectionError):
    """The state store failed (for Redis: unreachable, timed out, or refused a command).

    ``maybe_written``: the failed call was a write that may have been applied all the
    same (a timeout after sending); a reward is then safe to post again (a duplicate is
    answered as such), a decision is withdrawn by the router once the store answers.
    """

    def __init__(self, message: str, *, maybe_written: bool = False) -> None:
        super().__init__(message)
        self.maybe_written = maybe_written
