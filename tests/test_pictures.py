"""The pictures of a run: what the preview and the tile map show, checked pixel by pixel
against the labels and the per-tile facts they were made from."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
import zarr
from conftest import CountingLabel, blobs
from PIL import Image

from blockbuster.core import TILE_MAP_COLORS, label_colors, render_tile_map
from blockbuster.io import encode_png
from blockbuster.tasks import PREVIEW_FILE, TILE_MAP_FILE
from blockbuster.worker import render_pictures


def rgb_of(path_or_bytes) -> np.ndarray:
    src = path_or_bytes if isinstance(path_or_bytes, str) else io.BytesIO(path_or_bytes)
    with Image.open(src) as im:
        return np.asarray(im.convert("RGB"))


def coloured(rgb: np.ndarray, min_spread: int = 24) -> np.ndarray:
    """Pixels that are not grey: the preview draws the image in grey, labels in colour."""
    c = rgb.astype(int)
    return (c.max(axis=-1) - c.min(axis=-1)) > min_spread


@pytest.mark.usefixtures("client")
def test_run_preview_shows_labels_where_they_are_and_skipped_tiles(tmp_path, caplog):
    calls = tmp_path / "calls"
    calls.mkdir()
    img = blobs((300, 420), seed=5)
    img[:, 300:] = 0  # the last two columns of tiles are empty: skipped
    path = str(tmp_path / "image.zarr")
    zarr.create_array(store=path, data=img, chunks=(60, 60))
    out = str(tmp_path / "labels.zarr")
    with caplog.at_level("INFO", logger="blockbuster"):
        lab, summary = tile_process_with(path, CountingLabel(str(calls)), out)
    # the estimate-empty stage sampled the image of the tiles it found empty
    assert summary["n_skipped"] == 10
    assert not [r for r in caplog.records if "again" in r.getMessage()]
    pics = summary["pictures"]
    assert pics["files"] == {
        "preview": os.path.join(out, PREVIEW_FILE),
        "tile_map": os.path.join(out, TILE_MAP_FILE),
    }
    rgb = rgb_of(pics["files"]["preview"])
    assert rgb.shape[:2] == (300, 420)  # small enough: every pixel
    want = np.asarray(lab) != 0
    got = coloured(rgb)
    assert want.sum() > 1000
    assert np.array_equal(got, want)
    # each label's outline is drawn in that label's own colour
    labels = np.asarray(lab)
    top = np.zeros(labels.shape, bool)  # a label's pixels below another id: its outline
    top[1:] = (labels[1:] != labels[:-1]) & (labels[1:] != 0)
    top[::60] = False  # the tile grid is drawn over them
    top[:, ::60] = False
    ys, xs = np.nonzero(top)
    assert ys.size > 200
    assert (rgb[ys, xs] == label_colors(labels[ys, xs])).all()
    assert np.array_equal(rgb, _expected_preview(img, labels, (60, 60)))
    # the tile map: 5 x 7 tiles, the last two columns skipped (grey, crossed)
    tmap = rgb_of(pics["files"]["tile_map"])
    cell = tmap.shape[1] // 7
    assert tmap.shape[:2] == (5 * cell, 7 * cell)
    grey = list(TILE_MAP_COLORS["skipped"])
    for r in range(5):
        for c in range(7):
            centre_left = tmap[r * cell + cell // 2, c * cell + cell // 4 + 1].tolist()
            assert (centre_left == grey) == (c >= 5), (r, c, centre_left)


def tile_process_with(path, fn, out, **kw):
    from blockbuster import tile_process

    return tile_process(
        path,
        fn,
        tile_shape=(60, 60),
        write_to=out,
        skip_empty=True,
        return_summary=True,
        compute=True,
        **kw,
    )


def test_tile_map_marks_the_skipped_and_slow_tiles_and_seams_it_was_told_about():
    cell = 12
    skipped = [False] * 12
    skipped[5] = skipped[6] = True
    secs = [0.1] * 12
    secs[5] = secs[6] = 0.0
    secs[2], secs[9] = 2.0, 1.0
    m = render_tile_map(
        (3, 4),
        labels=list(range(12)),
        seconds=secs,
        skipped=skipped,
        slow=[2, 9],
        seam_warnings=[(0, 1)],
        cell=cell,
    )
    assert m.shape == (36, 48, 3)
    red = list(TILE_MAP_COLORS["slow tile frame"])
    grey = list(TILE_MAP_COLORS["skipped"])
    orange = list(TILE_MAP_COLORS["fn seconds bar"])
    mag = list(TILE_MAP_COLORS["seam warning"])
    for t in range(12):
        r, c = divmod(t, 4)
        y, x = r * cell, c * cell
        framed = m[y + cell // 2, x].tolist() == red and m[y, x + cell // 2].tolist() == red
        assert framed == (t in (2, 9)), t
        assert (m[y + 4, x + 6].tolist() == grey) == (t in (5, 6)), t
        bar = (m[y + cell - 2, x + 1 : x + cell - 1] == orange).all(axis=-1)
        # the slowest tile's bar runs the whole width; skipped tiles have none
        assert bar.all() == (t == 2), t
        assert bar.any() == (t not in (5, 6)), t
    # the seam between tiles 0 and 1 (a vertical edge at x = cell) is magenta, no other
    assert m[cell // 2, cell].tolist() == mag
    assert m[cell // 2 + cell, cell].tolist() != mag
    # more labels, brighter cell (viridis: few dark blue .. many yellow)
    assert m[cell + 6, 3 * cell + 6].sum() > m[6, 1 * cell + 6].sum()


def test_3d_preview_is_the_middle_plane():
    """Tiles sampled in memory (as the stages do) land where the middle plane's strided
    pixels are; only the tiles crossing that plane give samples."""
    from blockbuster.core import PreviewCanvas, TileGrid
    from blockbuster.worker import sample_tile

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (9, 40, 50)).astype(np.uint32)
    image = rng.random((9, 40, 50)).astype(np.float32)
    canvas = PreviewCanvas(labels.shape, max_side=17)
    assert canvas.params == (3, 4) and canvas.shape == (14, 17)
    grid = TileGrid((9, 40, 50), (3, 16, 16), (1, 2, 2))  # a halo, as tiles are read
    sampled = 0
    for n in range(grid.n_tiles):
        ext = grid.ext_slices(n)
        core = grid.core_slices(n)
        got = sample_tile(
            grid.core_bounds(n), canvas.params, image[ext], origin=[s.start for s in ext]
        )
        lab = sample_tile(grid.core_bounds(n), canvas.params, labels[core])
        assert (got is None) == (lab is None)
        if got is not None:
            sampled += 1
            canvas.add_image(n, *got)
            canvas.add_labels(*lab)
    assert sampled == 3 * 4  # only the tiles crossing plane 4 (z tiles 3..6)
    assert np.array_equal(canvas.labels, labels[4, ::3, ::3])
    assert np.array_equal(canvas.image, image[4, ::3, ::3])
    pics = render_pictures(canvas.labels, canvas.image, canvas.shape, [[], []], _tmap(grid))
    rgb = rgb_of(pics["preview"])
    assert np.array_equal(coloured(rgb, 10), labels[4, ::3, ::3] != 0)


def _tmap(grid):
    n = grid.n_tiles
    return {
        "grid_shape": grid.grid_shape,
        "labels": [1] * n,
        "seconds": [0.0] * n,
        "skipped": [False] * n,
    }


def test_a_preview_without_an_image_is_stored_exactly_at_any_size():
    """A merge's preview (labels over black, no image) has few colours: it is stored as
    palette indices, so the PNG is the picture pixel for pixel even above the size
    where a preview over an image is quantized, and stays small."""
    import scipy.ndimage as ndi

    from blockbuster.core import render_preview, render_preview_indexed
    from blockbuster.io._png import PALETTE_PIXELS

    rng = np.random.default_rng(3)
    lab = ndi.label(ndi.gaussian_filter(rng.random((1024, 1000)), 2) > 0.5)[0] * 7919
    assert lab.size > PALETTE_PIXELS and lab.max() > 2**20
    edges = (list(range(64, 1024, 64)), list(range(100, 1000, 100)))
    idx, pal = render_preview_indexed(lab, tile_edges=edges)
    png = encode_png(idx, palette=pal)
    rgb = rgb_of(png)
    assert np.array_equal(rgb, render_preview(None, lab, tile_edges=edges))
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 100  # label colours, outlines, grid
    assert len(png) < 400_000


def test_pictures_only_where_someone_can_see_them():
    """A run with a temporary output (``compute=True`` without ``write_to``) reporting to
    Prefect's temporary server (no UI, gone at exit) draws no pictures: nobody could see
    them. With an output (the PNGs go there) or an API URL (a server with a UI, or
    ``blockbuster up``'s, which sets it for the run), it does."""
    from types import SimpleNamespace

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blockbuster.tasks import preview_canvas

    def job(temporary: bool):
        grid = SimpleNamespace(shape=(64, 64))
        out = SimpleNamespace(temporary=temporary)
        return SimpleNamespace(
            preview=False, plan=SimpleNamespace(grid=grid), tile_fn=len, out=out
        )

    with temporary_settings({PREFECT_API_URL: None}):
        assert preview_canvas(job(True)) is None
        assert preview_canvas(job(False)) is not None
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert preview_canvas(job(True)) is not None


def test_pictures_stay_small():
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)  # incompressible
    png = encode_png(noisy)
    assert len(png) < 1.1 * (1 << 20)  # a 256-colour palette: ~1 byte per pixel at most
    assert rgb_of(png).shape == (1024, 1024, 3)


@pytest.mark.usefixtures("client")
def test_pictures_can_be_switched_off(tmp_path, monkeypatch):
    """BLOCKBUSTER_PICTURES=false: no PNG in the output, no pictures in the summary."""
    monkeypatch.setenv("BLOCKBUSTER_PICTURES", "false")
    calls = tmp_path / "calls"
    calls.mkdir()
    path = str(tmp_path / "image.zarr")
    zarr.create_array(store=path, data=blobs((120, 120), seed=2), chunks=(60, 60))
    out = str(tmp_path / "labels.zarr")
    _, summary = tile_process_with(path, CountingLabel(str(calls)), out)
    assert "pictures" not in summary
    assert not os.path.exists(os.path.join(out, PREVIEW_FILE))
    assert not os.path.exists(os.path.join(out, TILE_MAP_FILE))


def _count_rereads(calls_dir: str) -> None:
    """In this process: every strided re-read for the pictures leaves a file."""
    import uuid

    from blockbuster.worker import _pictures

    real = getattr(_pictures.sample_regions, "real", _pictures.sample_regions)

    def counted(*args, **kwargs):
        with open(os.path.join(calls_dir, f"{os.getpid()}-{uuid.uuid4().hex}"), "w") as f:
            f.write("sample_regions")
        return real(*args, **kwargs)

    counted.real = real
    _pictures.sample_regions = counted


def _uncount() -> None:
    from blockbuster.worker import _pictures

    _pictures.sample_regions = getattr(_pictures.sample_regions, "real", _pictures.sample_regions)


@pytest.mark.parametrize("case", ["2d-overlap", "3d", "merge"])
def test_pictures_read_nothing_again(tmp_path, client, caplog, case):
    """The preview comes from the samples the stages took in memory: no strided re-read
    of the output or the image (counted in every worker process), and the preview's
    labels are the output's, strided (a 3D image: its middle plane)."""
    import scipy.ndimage as ndi

    from blockbuster import merge_tile_labels, tile_process

    reads = tmp_path / "reads"
    reads.mkdir()
    client.run(_count_rereads, str(reads))
    calls = tmp_path / "calls"
    calls.mkdir()
    out = str(tmp_path / "labels.zarr")
    try:
        with caplog.at_level("INFO", logger="blockbuster"):
            if case == "merge":  # stored per-tile labels, small tiles: merge units here
                img = blobs((256, 256), seed=4)
                per_tile = np.zeros(img.shape, np.int32)
                for i in range(0, 256, 16):
                    for j in range(0, 256, 16):
                        per_tile[i : i + 16, j : j + 16] = ndi.label(img[i : i + 16, j : j + 16])[
                            0
                        ]
                path = str(tmp_path / "tiles.zarr")
                zarr.create_array(store=path, data=per_tile, chunks=(16, 16))
                lab, summary = merge_tile_labels(path, write_to=out, return_summary=True)
            elif case == "3d":  # a NumPy image: tiles computed by dask, middle plane
                img = blobs((10, 60, 80), seed=3)
                lab, summary = tile_process(
                    img,
                    CountingLabel(str(calls)),
                    tile_shape=(4, 30, 40),
                    write_to=out,
                    return_summary=True,
                )
            else:  # a stored image, the overlap merge, sequential labels
                img = blobs((180, 240), seed=6)
                path = str(tmp_path / "image.zarr")
                zarr.create_array(store=path, data=img, chunks=(60, 60))
                lab, summary = tile_process(
                    path,
                    CountingLabel(str(calls)),
                    tile_shape=(60, 60),
                    overlap=8,
                    merge="overlap",
                    sequential_labels=True,
                    write_to=out,
                    return_summary=True,
                )
    finally:
        client.run(_uncount)
    assert os.listdir(reads) == []  # nothing read again on any worker
    assert not [r for r in caplog.records if "again" in r.getMessage()]
    labels = np.asarray(lab)
    want = labels[labels.shape[0] // 2] if labels.ndim == 3 else labels
    assert want.any()
    rgb = rgb_of(summary["pictures"]["files"]["preview"])
    assert rgb.shape[:2] == want.shape
    assert np.array_equal(coloured(rgb), want != 0)
    # the labels' own colours: the final ids (after the merge table), not the tiles'
    top = np.zeros(want.shape, bool)
    top[1:] = (want[1:] != want[:-1]) & (want[1:] != 0)
    edges = summary["tile_shape"][-2:]
    top[:: edges[0]] = False
    top[:, :: edges[1]] = False
    ys, xs = np.nonzero(top)
    assert ys.size > 20
    assert (rgb[ys, xs] == label_colors(want[ys, xs])).all()
    # every pixel: the picture drawn here from the image and the output themselves
    image = None if case == "merge" else (img[img.shape[0] // 2] if img.ndim == 3 else img)
    assert np.array_equal(rgb, _expected_preview(image, want, edges))


def _expected_preview(image, labels, tile_shape):
    """The preview of a small run (every pixel; stored as lossless RGB) drawn from the
    image and labels in memory."""
    from blockbuster.core import render_preview

    assert labels.size < (1 << 18)  # below the palette's threshold: exact pixels
    edges = [list(range(t, s, t)) for s, t in zip(labels.shape, tile_shape)]
    return render_preview(image, labels, tile_edges=edges)


def test_resumed_tiles_image_is_read_again_for_the_preview(tmp_path, client, caplog):
    """A run that resumes tiles an earlier run staged has no image samples of them: it
    reads those again (and only those), and the preview is exactly the picture of the
    image and the output."""
    from faults import FaultyLabel, marked_image

    from blockbuster import tile_process
    from blockbuster.errors import TileFunctionError
    from blockbuster.io import Staging

    img = marked_image()
    path = str(tmp_path / "img.zarr")
    zarr.create_array(store=path, data=img, chunks=(20, 20))
    calls, flags = tmp_path / "calls", tmp_path / "flags"
    calls.mkdir()
    flags.mkdir()
    out, stg = str(tmp_path / "out.zarr"), str(tmp_path / "stg")
    (flags / "fail").touch()
    fn = FaultyLabel(str(calls), str(flags))
    kw = {"tile_shape": (20, 20), "write_to": out, "staging": stg, "retries": 0}
    with pytest.raises(TileFunctionError):
        tile_process(path, fn, **kw)
    for _ in range(600):  # batches of the failed run may still be running
        if not any(client.processing().values()):
            break
        time.sleep(0.05)
    finished = len(Staging(stg).finished_tiles())
    assert 0 < finished < 36
    (flags / "fail").unlink()
    with caplog.at_level("INFO", logger="blockbuster"):
        lab, summary = tile_process(path, fn, compute=True, return_summary=True, **kw)
    assert summary["n_resumed"] == finished
    again = [r.getMessage() for r in caplog.records if "again" in r.getMessage()]
    assert again == [f"pictures: reading the image of {finished} tiles again (no stage held it)"]
    rgb = rgb_of(summary["pictures"]["files"]["preview"])
    assert np.array_equal(rgb, _expected_preview(img, np.asarray(lab), (20, 20)))


def test_a_preview_painted_batch_by_batch_is_the_same_picture():
    """A merge's preview (no image under the labels) is painted as the relabel stage's
    batches arrive, and only its outlines are drawn after the last one: the picture is
    the one drawn at once, byte for byte, whatever order and grouping the tiles come in
    (ids large or small, several dtypes, grid lines)."""
    import scipy.ndimage as ndi

    from blockbuster.core import PreviewCanvas, render_preview, render_preview_indexed

    rng = np.random.default_rng(7)
    for trial in range(25):
        h, w = (int(v) for v in rng.integers(20, 300, 2))
        lab = ndi.label(ndi.gaussian_filter(rng.random((h, w)), 1.5) > rng.uniform(0.45, 0.6))[0]
        if trial % 3 == 0:
            lab = lab * 100_003  # ids far apart: colours from a sort, not a table
        lab = lab.astype([np.uint32, np.uint64, np.int64][trial % 3])
        canvas = PreviewCanvas((h, w), max_side=10**6, paint=True)
        th, tw = (int(v) for v in rng.integers(5, 80, 2))
        boxes = [(i, j) for i in range(0, h, th) for j in range(0, w, tw)]
        rng.shuffle(boxes)
        for i, j in boxes:
            canvas.add_labels((i, j), lab[i : i + th, j : j + tw])
            if rng.random() < 0.3:  # a batch ends
                canvas.paint_pending()
        canvas.paint_pending()
        edges = (list(range(th, h, th)), list(range(tw, w, tw)))
        at_once = render_preview(None, canvas.labels, tile_edges=edges)
        idx, pal = render_preview_indexed(canvas.labels, tile_edges=edges, painted=canvas.painted)
        painted = pal[idx]
        np.testing.assert_array_equal(painted, at_once)
        assert (painted != 0).any()
