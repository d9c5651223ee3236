from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from hypothesis import settings

# In CI the property tests draw the same examples on every run, so a red build always
# reproduces; locally they draw new ones each time and keep finding new cases.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from mdprep.synthetic import write_dicom_tree, write_image_tree


@pytest.fixture(scope="session")
def dicom_tree(tmp_path_factory):
    """A small DICOM tree with one of each troublesome file planted; read-only for tests."""
    root = tmp_path_factory.mktemp("dicom")
    planted = write_dicom_tree(root, patients=4, images_per_patient=5, shape=(16, 16), plant_bad_files=True)
    return planted


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return write_image_tree(root, patients=5, studies=2, shape=(12, 10), plant_bad_files=True)


@pytest.fixture
def runner():
    return CliRunner()
