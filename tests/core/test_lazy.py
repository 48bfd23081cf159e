"""Package names load on first use (packft.core.lazy), the same way in every package that does it."""

from __future__ import annotations

import subprocess
import sys

import pytest

import packft.ckpt
import packft.core
import packft.ingest
import packft.train

FIRST_USE = """
import sys
import packft.core
assert "packft.core.config" not in sys.modules, "imported before its first use"
load_config = packft.core.load_config
from packft.core.config import load_config as defined
assert load_config is defined
print("ok")
"""


def test_a_name_imports_its_module_on_first_use() -> None:
    run = subprocess.run([sys.executable, "-c", FIRST_USE], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout == "ok\n", run.stderr


@pytest.mark.parametrize("package", [packft.core, packft.ingest, packft.ckpt, packft.train])
def test_an_unknown_name_is_an_attribute_error_naming_the_package(package: object) -> None:
    name = package.__name__  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match=rf"module '{name}' has no attribute 'no_such_name'"):
        package.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_every_listed_name_resolves() -> None:
    for package in (packft.core, packft.ingest, packft.ckpt, packft.train):  # ckpt, train: torch
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
