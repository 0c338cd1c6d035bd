"""Fuzzing the readers and the config loader: every input ends in success or a clean error."""

import io
import os

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from emunet.config import ConfigError, load_config
from emunet.io.data import DataError, read_images, read_labels
from emunet.model.checkpoint import CheckpointError
from emunet.model.ms_checkpoint import read_mindspore_checkpoint

# A few hundred cases in the suite; a longer run by hand: EMUNET_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py
FAST = settings(max_examples=int(os.environ.get("EMUNET_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_tiff() -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, (np.arange(2 * 16 * 16) % 251).astype(np.uint8).reshape(2, 16, 16))
    return buf.getvalue()


def _valid_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(16 * 16) % 2 * 255).astype(np.uint8).reshape(16, 16)).save(buf, format="PNG")
    return buf.getvalue()


@st.composite
def mutated(draw, seed: bytes):
    """A valid file with random byte flips, truncation or junk appended."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=64))


@pytest.mark.parametrize("suffix,valid", [(".tif", _valid_tiff()), (".png", _valid_png())])
def test_image_readers_never_crash(tmp_path_factory, suffix, valid):
    @FAST
    @given(data=st.one_of(mutated(valid), st.binary(max_size=512)))
    def check(data):
        path = tmp_path_factory.mktemp("fuzz") / f"x{suffix}"
        path.write_bytes(data)
        for reader in (read_images, read_labels):
            try:
                reader(path)
            except DataError as exc:
                assert f"x{suffix}" in str(exc)

    check()


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)


@FAST
@given(text=st.text(max_size=200))
def test_config_loader_on_random_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError:
        pass


@FAST
@given(section=st.sampled_from(["train", "data", "model", "augment", "predict", "bogus"]),
       key=st.sampled_from(["steps", "lr", "fold", "width", "flip", "tile", "images", "x"]), value=yaml_values)
def test_config_loader_on_random_settings(tmp_path_factory, section, key, value):
    import yaml

    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(yaml.safe_dump({section: {key: value}}))
    try:
        load_config(path)
    except ConfigError:
        pass


@FAST
@given(data=st.binary(max_size=256))
def test_mindspore_reader_never_crashes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "m.ckpt"
    path.write_bytes(data)
    try:
        read_mindspore_checkpoint(path)
    except CheckpointError as exc:
        assert "m.ckpt" in str(exc)
