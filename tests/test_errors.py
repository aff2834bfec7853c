"""Every exception class the package defines descends from BanditServeError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import bandit_serve
from bandit_serve.errors import BanditServeError


def _modules() -> list[str]:
    return [
        m.name
        for m in pkgutil.walk_packages(bandit_serve.__path__, prefix="bandit_serve.")
        if not m.name.endswith("__main__")
    ]


def test_every_exception_class_descends_from_bandit_serve_error() -> None:
    names = _modules()
    assert "bandit_serve.service.core" in names and "bandit_serve.errors" in names
    found = []
    for name in names:
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException):
                found.append(cls)
                assert issubclass(cls, BanditServeError), f"{name}.{cls.__name__}"
    assert len(found) >= 7  # the hierarchy drawn in errors.py, at least
