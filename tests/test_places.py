"""Places: the local folder or store prefix that blockwise outputs are written to, piece by piece."""

from __future__ import annotations

import pickle

from emunet.io.places import Place


def test_a_local_place_writes_whole_pieces_lists_and_removes(tmp_path):
    out = Place(tmp_path / "out.ome.zarr")
    assert out.is_free() and out.names() == set() and not (out / ".zattrs").is_file()
    (out / "0" / "0.0.0").write_bytes(b"chunk")  # its folders made on the way
    (out / ".zattrs").write_bytes(b"{}")
    assert not out.is_free() and out.names() == {"0", ".zattrs"}
    assert (out / "0").names() == {"0.0.0"} and (out / "0" / "0.0.0").read_bytes() == b"chunk"
    assert not list(tmp_path.rglob("*.tmp*"))  # written beside and renamed: no temporary left
    assert out.parent == Place(tmp_path) and out.name == "out.ome.zarr"
    out.remove()
    assert out.is_free() and not (tmp_path / "out.ome.zarr").exists()
    out.remove()  # nothing there: nothing to do


def test_places_know_what_lies_inside_them_and_pickle_as_their_text(tmp_path):
    volume, output = Place(tmp_path / "v.zarr"), Place(tmp_path / "v.zarr" / "pred.ome.zarr")
    assert volume.contains(output) and not output.contains(volume)
    assert not Place(tmp_path / "v.zarr2").contains(volume) and not volume.contains(Place(tmp_path / "v.zarr2"))
    url = Place("s3://lab/run/out.ome.zarr/")
    assert str(url) == "s3://lab/run/out.ome.zarr" and url.parent == Place("s3://lab/run") and url.is_url
    assert str(url / "labels" / "cells") == "s3://lab/run/out.ome.zarr/labels/cells"
    assert Place("s3://lab/run").contains(url) and not Place("s3://lab/ru").contains(url)
    assert pickle.loads(pickle.dumps(url)) == url
