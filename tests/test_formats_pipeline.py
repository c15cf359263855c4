"""Microscopy formats through the whole pipeline: OME-Zarr in (channel axis from the
metadata), NGFF labels out (read by ome-zarr-py), TIFF in, zarr v2 out."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from conftest import blobs, same_partition

from blockbuster.api import tile_process

pytestmark = pytest.mark.usefixtures("client")


class FirstChannelLabel:
    """Labels channel 0 of a (c, y, x) tile."""

    def __call__(self, tile):
        assert tile.ndim == 3 and tile.shape[0] == 2, tile.shape
        return ndi.label(tile[0] > 0)[0]


def write_ome_zarr(path, img_cyx, version="0.5"):
    """A small 2-level OME-Zarr image with a channel axis, written by hand."""
    zf = 3 if version == "0.5" else 2
    root = zarr.open_group(path, mode="w", zarr_format=zf)
    levels = [img_cyx, img_cyx[:, ::2, ::2]]
    datasets = []
    for i, lvl in enumerate(levels):
        root.create_array(str(i), shape=lvl.shape, chunks=(1, 32, 32), dtype=lvl.dtype)[...] = lvl
        datasets.append(
            {
                "path": str(i),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, 0.5 * 2**i, 0.5 * 2**i]}
                ],
            }
        )
    ms = {
        "axes": [
            {"name": "c", "type": "channel"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"},
        ],
        "datasets": datasets,
        "name": "img",
    }
    if version == "0.5":
        root.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    else:
        ms["version"] = "0.4"
        root.attrs["multiscales"] = [ms]
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_in_ngff_labels_out(version, tmp_path):
    img = blobs((96, 80), seed=1)
    cyx = np.stack([img, np.zeros_like(img)]).astype(np.uint16)
    path = write_ome_zarr(str(tmp_path / "img.zarr"), cyx, version)
    out = os.path.join(path, "labels", "cells")
    lab = tile_process(path, FirstChannelLabel(), tile_shape=(32, 32), write_to=out, compute=True)
    assert lab.shape == img.shape
    assert same_partition(lab, ndi.label(img)[0])

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(path))())  # opened from the image, as napari does
    label_nodes = [n for n in nodes if n.load(Label)]
    assert len(label_nodes) == 1
    node = label_nodes[0]
    assert node.metadata["name"] == "cells"
    assert len(node.data) == 2
    assert tuple(node.data[0].shape) == img.shape
    assert tuple(node.data[1].shape) == (48, 40)
    assert same_partition(np.asarray(node.data[0]), lab)
    # the image lists its labels
    labels_group = zarr.open_group(os.path.join(path, "labels"), mode="r")
    attrs = labels_group.attrs.asdict()
    names = attrs["ome"]["labels"] if version == "0.5" else attrs["labels"]
    assert names == ["cells"]


def test_tiff_gives_same_labels_as_zarr(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    img = blobs((100, 90), seed=4).astype(np.uint16)
    tif = str(tmp_path / "img.tif")
    tifffile.imwrite(tif, img, tile=(32, 32))
    zpath = str(tmp_path / "img.zarr")
    zarr.create_array(store=zpath, shape=img.shape, chunks=(32, 32), dtype=img.dtype)[...] = img

    def lab(t):
        return ndi.label(t > 0)[0]

    a = tile_process(tif, lab, tile_shape=(40, 40), compute=True)
    b = tile_process(zpath, lab, tile_shape=(40, 40), compute=True)
    assert np.array_equal(a, b)


def test_zarr_v2_output(tmp_path):
    img = blobs((50, 50), seed=6)
    out = str(tmp_path / "v2.zarr")
    tile_process(img, lambda t: ndi.label(t)[0], tile_shape=(25, 25), write_to=out, zarr_format=2)
    assert os.path.exists(os.path.join(out, ".zarray"))
    arr = zarr.open_array(out, mode="r")
    assert arr.metadata.zarr_format == 2
    assert same_partition(arr[...], ndi.label(img)[0])
    assert arr.attrs["blockbuster"]["complete"] is True
