"""The public Python API: ``tile_process``, ``merge_tile_labels``, ``estimate_empty_tiles``.

These functions validate everything first (clear errors, nothing written), find or start
a Dask cluster, and run the Prefect flows of :mod:`blockbuster.flows`.
"""

from __future__ import annotations

import atexit
import contextvars
import dataclasses
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from blockbuster.core import (
    DEFAULT_MEMORY_FACTOR,
    ChannelAware,
    GpuMemoryHinted,
    GpuModelSized,
    MemoryHinted,
    PlaneByPlane,
    RunPlan,
    TileFunction,
    auto_tile_shape,
    fn_identity,
    make_plan,
)
from blockbuster.io import (
    ImageSource,
    OutputLock,
    OutputTarget,
    check_apart,
    check_staging,
    is_url,
    is_within,
    open_image,
    parse_location,
)

from .errors import IdentityWarning, InvalidParameterError, ParameterTypeError

__all__ = ["tile_process", "merge_tile_labels", "estimate_empty_tiles", "choose_tile_shape"]

log = logging.getLogger("blockbuster")
_TEMP_DIRS: list[str] = []


def _cleanup_temp_dirs() -> None:  # pragma: no cover - runs at interpreter exit
    for d in _TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup_temp_dirs)


def _temp_dir() -> str:
    d = tempfile.mkdtemp(prefix="blockbuster-")
    _TEMP_DIRS.append(d)
    return d


def _default_staging(write_to: str) -> str:
    """Next to the output (in the same store for a URL); outside an OME-Zarr image so
    it never pollutes it."""
    if is_url(write_to):
        scheme, rest = write_to.rstrip("/").split("://", 1)
        bucket, _, key = rest.partition("/")
        parts = key.split("/")
        top = next((i for i, p in enumerate(parts[:-1]) if p.endswith(".zarr")), None)
        if top is not None:
            parent, name = "/".join(parts[:top]), "-".join(parts[top:])
        else:
            parent, name = "/".join(parts[:-1]), parts[-1]
        base = f"{scheme}://{bucket}" + (f"/{parent}" if parent else "")
        return f"{base}/.{name}.blockbuster-staging"
    path = os.path.abspath(write_to)
    parts = path.split(os.sep)
    top = None
    for i, p in enumerate(parts[:-1]):
        if p.endswith(".zarr"):
            top = i
            break
    if top is not None:
        parent = os.sep.join(parts[:top]) or os.sep
        name = "-".join(parts[top:])
    else:
        parent, name = os.path.dirname(path), os.path.basename(path)
    return os.path.join(parent, f".{name}.blockbuster-staging")


def _fn_description(fn: Callable) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    mod = getattr(fn, "__module__", None) or type(fn).__module__
    text = repr(fn) if not hasattr(fn, "__qualname__") else f"{mod}.{name}"
    return text if len(text) < 200 else text[:197] + "..."


def _unknown_identity(src: ImageSource, fn_unknown: str | None) -> dict[str, str] | None:
    """None when the input and the function are both identified; else warn once (naming
    the reason) and return a random part of the run key, so that this run neither
    resumes another's staging nor reports an output as already complete."""
    reasons = [r for r in (src.identity().get("unknown"), fn_unknown) if r]
    if not reasons:
        return None
    import uuid
    import warnings

    msg = (
        "; ".join(reasons)
        + ". This run will not resume from an earlier run's staging and its output is "
        "never treated as already complete; it still runs."
    )
    warnings.warn(msg, IdentityWarning, stacklevel=3)
    return {"unknown_identity": uuid.uuid4().hex}


def _worker_memory(client) -> tuple[int, str]:
    import dask

    cfg = dask.config.get("blockbuster.worker-memory", None)
    if cfg:
        from dask.utils import parse_bytes

        return int(parse_bytes(cfg)), "dask config blockbuster.worker-memory"
    if client is not None:
        try:
            workers = client.scheduler_info().get("workers", {})
            limits = [w.get("memory_limit") for w in workers.values() if w.get("memory_limit")]
            if limits:
                return int(min(limits)), "Dask worker memory_limit"
        except Exception:  # pragma: no cover
            pass
    from blockbuster.cluster import allocation

    a = allocation()
    return int(a["memory_bytes"] / a["cpus"]), "allocation / CPUs (" + ", ".join(a["source"]) + ")"


def choose_tile_shape(
    src: ImageSource, fn: Callable | None, overlap, use_gpu: bool, client=None
) -> tuple[tuple[int, ...], dict[str, Any]]:
    """The tile shape ``"auto"`` picks for ``src`` (see :mod:`blockbuster.core`).

    With ``use_gpu``: the smaller of what one GPU worker's free GPU memory (measured on
    the workers of ``client``, else this machine's GPUs) minus the model's part allows
    and what its host memory allows, at most 64 Mi voxels. The function's declarations
    are read: ``memory_factor`` (host), ``gpu_memory_factor``, ``gpu_model_bytes`` and
    ``plane_by_plane`` (one-plane tiles on a 3D image).
    """
    from blockbuster.core import (
        DEFAULT_GPU_MEMORY_FACTOR,
        DEFAULT_GPU_MODEL_BYTES,
        GPU_MAX_TILE_VOXELS,
        normalize_overlap,
    )

    ov = normalize_overlap(overlap, src)
    factor = float(
        (fn.memory_factor if isinstance(fn, MemoryHinted) else None) or DEFAULT_MEMORY_FACTOR
    )
    planes = bool(fn.plane_by_plane) if isinstance(fn, PlaneByPlane) else False
    mem, where = _worker_memory(client)
    gpu: dict[str, Any] = {}
    if use_gpu:
        from blockbuster.cluster import allocation, gpu_worker_memory

        m = gpu_worker_memory(client, None if client is not None else allocation())
        if m is not None:
            if m["host_bytes"]:
                mem, where = m["host_bytes"], "host memory of a GPU worker (" + m["source"] + ")"
            if m["vram_bytes"] is not None:
                model = int(
                    fn.gpu_model_bytes
                    if isinstance(fn, GpuModelSized)
                    else DEFAULT_GPU_MODEL_BYTES
                )
                gpu = {
                    "gpu_bytes": max(int(m["vram_bytes"]) - model, 0),
                    "gpu_memory_factor": float(
                        fn.gpu_memory_factor
                        if isinstance(fn, GpuMemoryHinted)
                        else DEFAULT_GPU_MEMORY_FACTOR
                    ),
                    "gpu_where": f"free GPU memory minus {model / 2**30:.1f} GiB for the "
                    f"model ({m['source']})",
                    "max_voxels": GPU_MAX_TILE_VOXELS,
                }
    n_ch = src.shape[src.channel_axis] if src.channel_axis is not None else 1
    return auto_tile_shape(
        src.spatial_shape,
        src.spatial_chunks,
        itemsize=src.dtype.itemsize,
        memory_bytes=mem,
        n_channels=n_ch,
        overlap=ov,
        memory_factor=factor,
        where=where,
        plane_by_plane=planes,
        **gpu,
    )


def _check_bool(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(f"{name}={value!r} must be True or False")


def _prepare_output(
    write_to, zarr_format: int, overwrite: bool = False, compute: bool = False
) -> OutputTarget:
    _check_bool("overwrite", overwrite)
    if write_to is None:
        # compute=True without write_to: the caller wants an array and no store, so the
        # labels may be relabelled straight into one (tasks/_relabel.py)
        return OutputTarget(
            os.path.join(_temp_dir(), "labels.zarr"), temporary=True, in_memory=bool(compute)
        )
    target = OutputTarget(write_to, zarr_format=zarr_format, overwrite=bool(overwrite))
    if is_url(target.path):
        _check_store(target.path, "write_to")
    return target


def _staging_root(staging, out: OutputTarget) -> str:
    if staging is not None:
        root = os.fspath(parse_location(staging, param="staging"))
        if is_url(root):
            _check_store(root, "staging")
        return root
    if out.temporary:
        return os.path.join(os.path.dirname(out.path), "staging")
    return _default_staging(out.path)


def _input_place(src: ImageSource) -> tuple[str | None, str | None]:
    """(path of a stored input, its OME-Zarr image group or None); (None, None) for
    in-memory inputs."""
    reader = src.reader
    path = getattr(reader, "path", None)
    if src.kind != "stored" or not path:
        return None, None
    group = None
    if getattr(reader, "kind", None) == "ome-zarr":
        comp = getattr(reader, "component", None)
        group = os.path.join(path, comp.strip("/")) if comp else path
    return os.fspath(path), group


def _check_places(src: ImageSource, out: OutputTarget, staging_root: str, result_key: str):
    """Every rule on where this run writes and deletes, before anything is touched
    (and again under the output's lock): the output and the staging are not the input,
    around it or inside it (an OME-Zarr input's labels/<name> aside, for the output),
    not each other, and hold nothing blockbuster may not replace."""
    image, group = _input_place(src)
    if image is not None:
        if not out.temporary:
            check_apart(out.path, image, param="write_to", labels_of=group)
        check_apart(staging_root, image, param="staging")
    if not out.temporary:
        o, st = os.path.realpath(out.path), os.path.realpath(staging_root)
        if is_within(st, o) or is_within(o, st):
            raise InvalidParameterError(
                f"staging={staging_root!r} and write_to={out.path!r} overlap; the staging "
                "must be a separate folder (the default is next to the output)"
            )
        done = out.completed_run()
        if not (done is not None and done.get("result_key") == result_key):
            out.state()  # OutputExistsError unless blockbuster may (re)create it
    check_staging(staging_root)


def _use_storage_options(options, *places) -> None:
    """Use ``options`` for the buckets of the URLs among ``places`` (this process; the
    workers get them when the run starts)."""
    if options is None:
        return
    from blockbuster.io import set_storage_options
    from blockbuster.io._stores import split_url

    if not isinstance(options, dict):
        raise InvalidParameterError(
            "storage_options must be a dict of object store settings, e.g. "
            "{'endpoint': 'http://127.0.0.1:9000', 'region': 'us-east-1'}"
        )
    for p in places:
        if isinstance(p, (str, os.PathLike)) and is_url(os.fspath(p)):
            scheme, bucket, _ = split_url(os.fspath(p))
            set_storage_options(f"{scheme}://{bucket}", options)


def _check_store(url: str, what: str) -> None:
    """A URL to write to: its scheme must be writable and its bucket usable (one clear
    error naming it, before anything is written)."""
    from blockbuster.io import check_url
    from blockbuster.io._stores import READ_ONLY_SCHEMES, split_url

    scheme = split_url(url)[0]
    if scheme in READ_ONLY_SCHEMES:
        raise InvalidParameterError(
            f"{what}={url!r}: {scheme}:// URLs are read-only; write to s3://, gs://, az:// "
            "or a local path"
        )
    check_url(url, what=what, write=True)


def _result(out: OutputTarget, compute: bool):
    """The written labels. A local output is read in whole chunks (or shards) in
    parallel through the direct path where it applies (io/_readback.py), as NumPy or as
    a dask array with one task per group of chunks; an object store through zarr. Labels
    relabelled into memory (``compute=True`` without ``write_to``) are returned as they
    are."""
    if out.labels is not None:
        # handed to the caller, not kept by the run: Prefect's context (a queue service
        # started in the flow) can keep the run's Job, and with it this OutputTarget, for
        # the rest of the process
        labels, out.labels = out.labels, None
        return labels
    if not is_url(out.array_path):
        from blockbuster.io import read_labels

        return read_labels(out.array_path, compute=compute)
    import dask.array as da

    arr = out.open("r")
    if compute:
        return arr[...]
    return da.from_zarr(arr)


def _start_cluster(use_gpu):
    """The cluster of this call: the user's client, or the shared local cluster, whose
    start begins now in the background (cluster/_shared.py)."""
    from blockbuster.cluster import RunCluster

    return RunCluster(use_gpu)


def _run(
    flow,
    plan: RunPlan,
    src: ImageSource,
    fn,
    fn_desc: str,
    out: OutputTarget,
    *,
    staging: str | os.PathLike | None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run a flow: the staging placed and every path checked first (nothing is written
    before); against the server of ``blockbuster up`` when one runs and no
    ``PREFECT_API_URL`` is set (its runs and artifacts stay in its UI), else as before;
    one run at a time on an output: a second one waits (io/_lock.py)."""
    from blockbuster.tasks import use_local_server

    root = _staging_root(staging, out)
    _check_places(src, out, root, plan.result_key)
    # no write_to and no staging=: both in a temporary folder removed at exit, which no
    # later process can resume from; nothing of it is fsync-ed (a crash redoes it all)
    durable = not (out.temporary and staging is None)
    plan = dataclasses.replace(plan, staging_root=root, durable=durable)
    lock = None if out.temporary else OutputLock(out.path)
    with use_local_server():
        if lock is not None:
            lock.wait({"run_key": plan.run_key})
        try:
            return _run_locked(flow, plan, src, fn, fn_desc, out, **kwargs)
        finally:
            if lock is not None:
                lock.release()


def _run_locked(
    flow,
    plan: RunPlan,
    src: ImageSource,
    fn,
    fn_desc: str,
    out: OutputTarget,
    *,
    use_gpu,
    progress: bool,
    keep_staging: bool,
    cluster=None,
) -> dict[str, Any]:
    from blockbuster.cluster import RunCluster, check_client
    from blockbuster.io import Staging
    from blockbuster.tasks import (
        Job,
        ephemeral_run_settings,
        local_result_storage,
        prefect_client_context,
        start_first,
        wait_for_closed,
        warm_up,
    )

    done = out.completed_run()
    if done is not None and done.get("result_key") == plan.result_key:
        log.info(
            "output %s is already complete for this run (key %s); nothing to do",
            out.path,
            plan.result_key,
        )
        return {"run_key": plan.run_key, "output": out.path, "cached": True, **done}
    _check_places(src, out, plan.staging_root, plan.result_key)  # again, under the lock
    staging = Staging(plan.staging_root)
    info = {"run_key": plan.run_key, "description": plan.description}
    # the user's client, else the process's shared local cluster (cluster/_shared.py),
    # started by the caller before it opened the image
    handle = cluster if cluster is not None else RunCluster(use_gpu)
    job = None
    # Prefect's API (a temporary server, in ephemeral mode) comes up in a thread while
    # the cluster starts; tiles start as soon as the cluster is up.
    ctx = contextvars.copy_context()  # the caller's Prefect settings context
    warm_errors: list[BaseException] = []
    warm = threading.Thread(
        target=ctx.run,
        args=(warm_up, warm_errors),
        daemon=True,
        name="blockbuster-prefect-warm-up",
    )
    warm.start()
    try:
        client = handle.client()
        if not handle.owned:
            check_client(client)
        from blockbuster.cluster import share_storage_options

        share_storage_options(client)  # storage_options= reach the workers, not the tasks
        resumed = staging.prepare(info)
        if resumed:
            log.info("resuming from staging %s", plan.staging_root)
            staging.verify()  # records failing their checksums are dropped: recomputed
        resources = {"GPU": 1} if use_gpu and _has_gpu_workers(client) else None
        job = Job.create(
            plan=plan,
            source=src,
            fn=fn,
            cluster=handle,
            output=out,
            progress=progress,
            fn_description=fn_desc,
            resources=resources,
            generation=staging.generation or "",
        )
        start_first(job)  # tiles start before Prefect is ready
        warm.join()
        if warm_errors:
            raise warm_errors[0]  # Prefect's temporary server did not start
        wait_for_closed()  # the previous run's last artifacts (tasks/background.py)
        from prefect_dask import DaskTaskRunner

        # The flow runs on a DaskTaskRunner bound to the same cluster; its stage tasks
        # run in the flow's thread and fan tiles out through the client themselves
        # (docs/orchestration.md).
        runner = DaskTaskRunner(address=client.scheduler.address)
        with ephemeral_run_settings(), prefect_client_context():
            summary = flow.with_options(
                task_runner=runner, persist_result=False, result_storage=local_result_storage()
            )(job, keep_staging=keep_staging)
        return {**summary, **job.details}
    finally:
        if job is not None:
            # the last artifacts are sent by the reporter thread after the call returns
            # (tens of ms; a process waits for the thread before it exits)
            job.reporter.close(wait=False)
            # work no stage adopted (the flow failed or never started) is cancelled, and
            # what the run held per tile dropped: the Job may outlive the call
            job.release()
        warm.join()
        handle.close()


def _has_gpu_workers(client) -> bool:
    from blockbuster.cluster import gpu_workers

    try:
        return bool(gpu_workers(client))
    except Exception:  # pragma: no cover
        return False


def _current_client():
    try:
        from distributed import default_client

        return default_client()
    except ValueError:
        return None


def _check_gpus(fn) -> None:
    """Refuse GPU work where there is no GPU: on the cluster in use when there is one
    (warn where its workers cannot tell), else on this machine, where blockbuster would
    start its GPU cluster."""
    from blockbuster.cluster import check_gpu_client, declares_gpu, gpu_info, no_gpu_message
    from blockbuster.errors import NoGPUError

    what = (
        f"fn {_fn_description(fn)} declares that it needs a GPU (uses_gpu=True)"
        if declares_gpu(fn)
        else "use_gpu=True"
    )
    client = _current_client()
    if client is not None:
        check_gpu_client(client, what)
    elif not gpu_info():
        raise NoGPUError(no_gpu_message(what) + "; nothing was run or written")


def tile_process(
    image,
    fn: Callable,
    *,
    tile_shape="auto",
    overlap=0,
    channel_axis=None,
    merge: str = "auto",
    connectivity: int = 1,
    iou_threshold: float = 0.5,
    skip_empty: bool = False,
    empty_threshold: float | None = None,
    sequential_labels: bool = False,
    write_to=None,
    compute: bool = False,
    progress: bool = False,
    use_gpu: bool | str = False,
    staging=None,
    retries: int = 2,
    overwrite: bool = False,
    keep_staging: bool = False,
    level: int = 0,
    zarr_format: int = 3,
    retry_delay: float = 1.0,
    return_summary: bool = False,
    storage_options: dict | None = None,
):
    """Run ``fn`` on every tile of ``image`` and merge the results into global labels.

    Parameters
    ----------
    image : str, path, zarr.Array, dask.array.Array or numpy.ndarray
        A zarr array, OME-Zarr image group (``level`` picks the resolution) or TIFF
        path, or an array. 2D or 3D, with an optional channel axis.
    fn : callable
        ``fn(tile) -> labels``: integer labels (0 = background) with the tile's spatial
        shape. It gets the tile with its halo and all channels. Must be picklable (it
        runs in worker processes).
    tile_shape : "auto", int or tuple of int
        Tile core shape, one entry per axis (the channel axis takes its whole extent)
        or per spatial axis. "auto": the largest chunk-aligned tile whose working set
        fits one worker's memory (one GPU's with ``use_gpu``).
    overlap : int or tuple of int
        Halo around each tile given to ``fn`` (clipped at the image edge, never
        padded), cropped away before staging. An int applies to the axes whose tile
        extent is greater than one: ``tile_shape=(1, Y, X)`` gives ``fn`` one-plane
        blocks with an in-plane halo. One int per axis is taken as given.
    channel_axis : int, optional
        Axis of channels; taken from OME-Zarr metadata when not given.
    merge : {"auto", "touch", "overlap"}
        "touch": labels touching across a seam under ``connectivity`` are one object
        (exactly whole-image connected components for a connected-components ``fn``).
        "overlap": labels of neighbouring tiles matched in the shared halo by IoU >=
        ``iou_threshold`` (mutual best match) — cells that merely touch stay apart.
        "auto": touch without overlap, else overlap.
    connectivity : int
        1 (faces) to ndim (full, corners included).
    skip_empty, empty_threshold
        Never call ``fn`` on tiles whose core has no pixel above ``empty_threshold``
        (default: 0, pass a value or use :func:`estimate_empty_tiles` to choose one).
    sequential_labels : bool
        Output labels exactly 1..N (no extra pass over the voxels).
    write_to : path or URL, optional
        Output zarr array (v3, or v2 with ``zarr_format=2``), or
        ``image.zarr/labels/<name>`` for an NGFF label image. Default: a temporary store.
        ``image``, ``write_to`` and ``staging`` may be URLs (``s3://``, ``gs://``,
        ``az://``; ``http(s)://`` for reading): credentials and endpoint from the cloud
        SDK's standard environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
        ``AWS_ENDPOINT_URL``, ``AWS_REGION``), or ``storage_options``.
    storage_options : dict, optional
        Object store settings the environment does not give (obstore config keys, e.g.
        ``{"endpoint": "http://127.0.0.1:9000", "access_key_id": ..., "region": ...}``),
        used for the buckets of the URLs given; sent to the Dask workers by a worker
        plugin, never logged nor part of a run key.
    compute : bool
        Return a NumPy array instead of a dask array reading the output. Without
        ``write_to`` the labels are relabelled straight into the returned array and no
        output store is written (``summary["output"]`` is None, and the pictures are
        artifacts only: no ``summary["pictures"]``); with ``staging=`` on an object
        store a temporary store is written and read back as before. A crash of such a
        call redoes all of it (its staging is in a temporary folder removed at exit).
    progress : bool
        tqdm progress bars per stage.
    use_gpu : bool or "auto"
        Start a GPU cluster (when no client exists; see :func:`make_local_cluster`),
        route segmentation to GPU workers (the Dask resource ``GPU``) and size tiles to
        GPU memory. A function that declares it needs a GPU (a true ``uses_gpu``
        attribute, as ``cellpose_fn(gpu=True)`` has; any callable may) implies
        ``use_gpu=True``. Where no GPU can run it (no GPU on this machine, or a client
        whose workers have none) the call is refused with
        :class:`~blockbuster.errors.NoGPUError` before anything runs or is written; a
        client whose workers cannot tell gets a warning.
    staging : path, optional
        Where staged tiles live (default: next to ``write_to``). Staging persists until
        success, so a crashed run resumes; ``keep_staging=True`` keeps it afterwards.
    retries : int
        Retries of a failing ``fn`` call per tile (with a growing delay).
    overwrite : bool
        Replace a complete output of another run at ``write_to``. Without it that is a
        :class:`~blockbuster.errors.OutputExistsError` (a ``FileExistsError``). A path
        blockbuster did not write (a file, a folder, a zarr store without its completion
        record) is never replaced; an unfinished blockbuster output always is.
    return_summary : bool
        Also return the run summary dict: ``(labels, summary)``. Its ``"tiles"`` and
        ``"seams"`` are :class:`~blockbuster.core.TileRecords` and
        :class:`~blockbuster.core.SeamTable`: they read like lists of one dict per tile
        (per seam) and hold NumPy columns in ``.rows`` (docs/architecture.md, "What the
        driver holds per tile").

    Returns
    -------
    dask.array.Array or numpy.ndarray
        The global labels (uint32, or uint64 when more are needed).

    Examples
    --------
    >>> import numpy as np, scipy.ndimage as ndi
    >>> from blockbuster import tile_process
    >>> def label(tile):
    ...     return ndi.label(tile > 0)[0]
    >>> img = np.zeros((64, 64), np.uint8); img[10:40, 10:40] = 1
    >>> lab = tile_process(img, label, tile_shape=(16, 16), compute=True)  # doctest: +SKIP
    >>> int(lab.max())                                                      # doctest: +SKIP
    1
    """
    if not isinstance(fn, TileFunction):
        raise ParameterTypeError(
            f"fn={fn!r} is not callable; pass a function fn(tile) -> integer labels"
        )
    for name, v in (
        ("skip_empty", skip_empty),
        ("sequential_labels", sequential_labels),
        ("compute", compute),
        ("progress", progress),
        ("keep_staging", keep_staging),
    ):
        _check_bool(name, v)
    if use_gpu not in (False, True, "auto"):
        raise InvalidParameterError(f"use_gpu={use_gpu!r} must be False, True or 'auto'")
    _use_storage_options(storage_options, image, write_to, staging)
    src = open_image(image, channel_axis=channel_axis, level=level)
    if src.channel_axis is not None and isinstance(fn, ChannelAware):
        fn = fn.with_channel_axis(src.channel_axis)  # built-in segmenters learn the axis
    from blockbuster.cluster import declares_gpu

    if declares_gpu(fn) and use_gpu is not True:
        # a function that needs a GPU runs on GPU workers only, whatever use_gpu says
        log.info("fn %s declares uses_gpu: running it on GPU workers", _fn_description(fn))
        use_gpu = True
    if use_gpu is True:
        _check_gpus(fn)  # before any model loads, anything is written or a cluster starts
    cluster = _start_cluster(use_gpu)  # comes up while the call plans
    fid, fn_unknown = fn_identity(fn)
    nonce = _unknown_identity(src, fn_unknown)
    why = None
    if isinstance(tile_shape, str):
        if tile_shape != "auto":
            raise InvalidParameterError(
                f"tile_shape={tile_shape!r} must be 'auto', an int or a tuple of ints"
            )
        tile_shape, why = choose_tile_shape(
            src, fn, overlap, use_gpu is True, _current_client() if use_gpu is True else None
        )
    out = _prepare_output(write_to, zarr_format, overwrite, compute)
    plan = make_plan(
        src,
        fn_id=fid or "unknown",
        extra_identity=nonce,
        tile_shape=tile_shape,
        overlap=overlap,
        merge=merge,
        connectivity=connectivity,
        iou_threshold=iou_threshold,
        skip_empty=skip_empty,
        empty_threshold=empty_threshold,
        sequential_labels=sequential_labels,
        retries=retries,
        retry_delay=retry_delay,
        max_tiles=_max_tiles(),
    )
    if why is not None:
        log.info("tile_shape='auto' chose %s: %s", plan.grid.tile_shape, why)
    from blockbuster.flows import tile_process_flow

    summary = _run(
        tile_process_flow,
        plan,
        src,
        fn,
        _fn_description(fn),
        out,
        staging=staging,
        use_gpu=use_gpu,
        progress=progress,
        keep_staging=keep_staging,
        cluster=cluster,
    )
    result = _result(out, compute)
    return (result, summary) if return_summary else result


def merge_tile_labels(
    labeled,
    *,
    input_component: str | None = None,
    tile_shape=None,
    write_to=None,
    connectivity: int = 1,
    sequential_labels: bool = False,
    progress: bool = False,
    compute: bool = False,
    staging=None,
    keep_staging: bool = False,
    zarr_format: int = 3,
    overwrite: bool = False,
    return_summary: bool = False,
    storage_options: dict | None = None,
):
    """Merge per-tile labels into globally consistent labels (touching labels join).

    Parameters
    ----------
    labeled : dask.array.Array, zarr.Array or path
        Per-tile labels: a dask array whose blocks are tiles (each block is computed
        exactly once), or a zarr array (path, plus ``input_component`` inside a group)
        whose chunks (shards, when sharded) are tiles. Ids need not be unique across
        tiles; they are made so.
    tile_shape : tuple of int, optional
        Override the tiles (defaults to the blocks / chunks).
    connectivity, sequential_labels, write_to, progress, compute, staging, overwrite
        As in :func:`tile_process` (``write_to`` is never ``labeled`` itself, nor
        around or inside it).

    Returns
    -------
    dask.array.Array or numpy.ndarray

    Notes
    -----
    The output is chunked by tiles. Small stored tiles (at most 512 x 512 voxels, or
    as many in 3D) are indexed and relabelled in blocks of whole tiles (merge units,
    up to 4 Mi voxels; docs/architecture.md), and a zarr v3 output is then sharded: one
    shard per block, one inner chunk per tile (4,096 tiles of 128 x 128 make 16 files).

    Examples
    --------
    >>> import dask.array as da, numpy as np, scipy.ndimage as ndi
    >>> x = da.from_array(np.ones((32, 32), np.uint8), chunks=16)
    >>> per_tile = x.map_blocks(lambda b: ndi.label(b)[0].astype(np.uint32), dtype=np.uint32)
    >>> merge_tile_labels(per_tile, compute=True).max()  # doctest: +SKIP
    1
    """
    for name, v in (
        ("sequential_labels", sequential_labels),
        ("compute", compute),
        ("progress", progress),
        ("keep_staging", keep_staging),
    ):
        _check_bool(name, v)
    _use_storage_options(storage_options, labeled, write_to, staging)
    cluster = _start_cluster(False)  # comes up while the labels are opened and planned
    src = open_image(labeled, component=input_component, param="labeled")
    if src.channel_axis is not None:
        raise InvalidParameterError("merge_tile_labels takes label images without a channel axis")
    if not np.issubdtype(src.dtype, np.integer) or src.dtype == bool:
        raise InvalidParameterError(
            f"labeled has dtype {src.dtype}; per-tile labels must be integers (0 = background)"
        )
    if tile_shape is None:
        tile_shape = _tiles_of(src)
    out = _prepare_output(write_to, zarr_format, overwrite, compute)
    # stored labels are read again when relabelling rather than copied to the staging
    # (a dask array's blocks are computed once, so those are staged)
    plan = make_plan(
        src,
        fn_id="merge-only",
        extra_identity=_unknown_identity(src, None),
        tile_shape=tile_shape,
        overlap=0,
        merge="touch",
        connectivity=connectivity,
        sequential_labels=sequential_labels,
        retries=0,
        read_back=src.kind == "stored",
        max_tiles=_max_tiles(),
    )
    from blockbuster.flows import merge_flow

    summary = _run(
        merge_flow,
        plan,
        src,
        None,
        "merge of per-tile labels",
        out,
        staging=staging,
        use_gpu=False,
        progress=progress,
        keep_staging=keep_staging,
        cluster=cluster,
    )
    result = _result(out, compute)
    return (result, summary) if return_summary else result


def _max_tiles() -> int:
    """The most tiles a plan may have (dask config ``blockbuster.max-tiles``)."""
    import dask

    from blockbuster.core import MAX_TILES

    value = dask.config.get("blockbuster.max-tiles", MAX_TILES)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"dask config blockbuster.max-tiles={value!r} must be an integer"
        ) from None


def _tiles_of(src: ImageSource) -> tuple[int, ...]:
    if src.kind == "dask":
        chunks = src.dask_array.chunks
        for ax, c in enumerate(chunks):
            if len(c) > 2 and len(set(c[:-1])) > 1 or (len(c) > 1 and c[-1] > c[0]):
                raise InvalidParameterError(
                    f"labeled has irregular chunks along axis {ax} ({c[:5]}...); blocks must be "
                    "regular tiles (all equal except the last): rechunk it, e.g. "
                    "labeled.rechunk(...), or pass tile_shape"
                )
        return tuple(int(c[0]) for c in chunks)
    reader = src.reader
    arr = getattr(reader, "array", None)
    shards = getattr(arr, "shards", None) if arr is not None else None
    chunks = shards or src.chunks
    if chunks is None:
        raise InvalidParameterError(
            "the labels have no chunks to take as tiles; pass tile_shape, e.g. tile_shape=512"
        )
    return tuple(int(c) for c in chunks)


def estimate_empty_tiles(
    image,
    tile_shape,
    *,
    threshold: float | None = None,
    channel_axis: int | None = None,
    level: int = 0,
) -> dict[str, Any]:
    """Which tiles of ``image`` hold nothing above ``threshold``.

    Parameters
    ----------
    image
        As in :func:`tile_process`.
    tile_shape : tuple of int
        As in :func:`tile_process` (not "auto").
    threshold : float, optional
        A tile is empty when no pixel of it exceeds this. Default: estimated from a
        cheap sample (coarse pyramid level, a spread of chunks, or a strided subsample).

    Returns
    -------
    dict
        ``threshold``, ``threshold_method``, ``empty_fraction``, ``n_tiles``,
        ``n_empty``, ``empty`` (boolean array over the tile grid), ``grid_shape``.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((64, 64), np.uint16); img[:8, :8] = 500
    >>> r = estimate_empty_tiles(img, (32, 32), threshold=100)
    >>> r["n_empty"], r["empty"].tolist()
    (3, [[False, True], [True, True]])
    """
    from blockbuster.core import (
        normalize_tile_shape,
        sample_image,
        threshold_from_sample,
        tile_maxima,
    )

    src = open_image(image, channel_axis=channel_axis, level=level)
    ts = normalize_tile_shape(tile_shape, src)
    method = "given"
    sample_desc = None
    if threshold is None:
        sample, sample_desc = sample_image(src)
        est = threshold_from_sample(sample)
        threshold, method = est["threshold"], f"{est['method']} ({sample_desc})"
    import dask.array as da

    if src.kind == "stored":
        arr = (
            da.from_array(
                src.reader,
                chunks=src.chunks,
                asarray=True,
                lock=False,
                meta=np.empty((0,) * src.ndim, dtype=src.dtype),
            )
            if not hasattr(src.reader, "array")
            else da.from_zarr(src.reader.array)
        )
    else:
        arr = src.dask_array
    maxima = tile_maxima(arr, ts, src.channel_axis)
    empty = ~(maxima > threshold)
    n = int(empty.size)
    return {
        "threshold": float(threshold),
        "threshold_method": method,
        "empty_fraction": float(empty.sum()) / n if n else 0.0,
        "n_tiles": n,
        "n_empty": int(empty.sum()),
        "empty": empty,
        "grid_shape": tuple(empty.shape),
        "tile_shape": ts,
    }
