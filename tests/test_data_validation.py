"""Data validation at load: bad files, non-finite inputs, labels outside the declared classes,
empty classes and unprepared TFDS data each give one DataError naming the file and the array."""

import zipfile

import numpy as np
import pytest

from jaxtl import data

tfds = pytest.importorskip("tensorflow_datasets")


# --- TFDS -----------------------------------------------------------------------------------------


def test_tfds_unprepared_in_the_default_data_dir_says_how_to_prepare(tmp_path, monkeypatch):
    # TFDS reads its default data_dir from TFDS_DATA_DIR once, at import, into this constant.
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataError) as info:
        data.load("cifar10")
    message = str(info.value)
    assert f"'cifar10' is not prepared in the default TFDS data_dir ({tmp_path})" in message
    assert "tfds build cifar10 --file_format=array_record`" in message
    assert "\n" not in message


def test_tfds_unprepared_in_an_explicit_data_dir_says_how_to_prepare(tmp_path):
    with pytest.raises(data.DataError, match=rf"not prepared in {tmp_path} .*--data_dir={tmp_path}"):
        data.load("tfds:mnist", data_dir=str(tmp_path))
