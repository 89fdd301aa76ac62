"""Packaging: every subpackage is installed, and so is the shipped dataset."""

from __future__ import annotations

import tomllib

from tests.conftest import REPO


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "aerec").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found | {"aerec._bundled"} == listed


def test_the_installed_package_finds_the_shipped_dataset():
    from aerec.data.datasets import bundled_dir

    assert (bundled_dir() / "ml-latest-small" / "README.txt").is_file()
