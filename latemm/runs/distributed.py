"""latemm on a Ray cluster: encode and index with Ray Data, serve a sharded index from actors.

- ``encode_ray``: ``ray.data.read_parquet`` over the corpus files, ``map_batches`` on an actor
  pool (one encoder replica per GPU, ``num_gpus=1``; CPU actors without GPUs) running
  ``pipeline.encode_batch``, embeddings written as Parquet (one partition per index shard).
- ``index_ray``: ``encode_ray`` into a staging folder, then one Ray task per shard running
  ``pipeline.index_corpus`` on its partition, then ``sharded.commit_shards``.
- ``ShardActors``: one actor per shard of a sharded index or fields collection (in Python an
  unsharded fields index can be one shard; the CLI and ``latemm.search`` refuse it) holding
  its vector fields memory-mapped (a sharded index of one encoder: its field ``default``);
  ``FieldRetriever`` calls the per-part phases there (``latemm.retrieval.field_parts``: first stage,
  locate, MaxSim of given candidates) on every shard at once, and merges, fuses and reranks
  on the coordinator as in-process. A bm25 field is one index over the collection (its
  statistics are collection-wide): the coordinator holds it.

Failures: Ray Data restarts a dead encoder actor and retries its batch (``max_restarts``,
``max_task_retries``); a block's output exists only once its task finished, so nothing is lost
or written twice. Index tasks are retried on a dead worker (``index_corpus`` resumes: a retry
skips what the dead attempt committed). A dead shard actor is restarted and its call retried;
when that fails too, the search raises ``ShardUnavailableError`` naming the shard, never a
partial result. A local cluster (``connect("local")``) ends with the process that started
it, SIGKILL included (``watch_session``).

Needs ``pip install 'latemm[ray]'``; nothing here is imported unless ``--ray`` is asked for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO, Any, cast

import pyarrow as pa

from index_store.errors import InputError, LatemmError, ShardUnavailableError, require
from latemm.data.io import Columns, count_rows, open_dataset, read_batches, table_batch
from latemm.encoders.base import Encoder, check_recorded
from latemm.index.pipeline import (
    DrawnCodebook,
    IndexReport,
    encode_corpus,
    index_corpus,
    shard_codebook,
)
from latemm.index.sharded import (
    assign_shards,
    check_new_folder,
    commit_shards,
    prepare,
    record_building,
    shard_name,
    staging_dir,
    writer_lock,
)
from latemm.retrieval.field_parts import Pending

# Restarts of a dead actor (and retries of its calls / of a dead task) before giving up.
RETRIES = 3
SHARD_COLUMN = "latemm_shard"  # no leading "_": corpus folders hide such names


def connect(
    address: str | None = "local",
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
) -> ModuleType:
    """Ray, initialised: ``"local"`` (or None) starts a cluster on this machine (no dashboard;
    its processes die with this process, see ``watch_session``), any other address (``auto``,
    ``ray://head:10001``) joins a running one. Reuses an initialised Ray."""
    ray = require("ray", "ray", "ray[data]")
    if not ray.is_initialized():
        if address in (None, "local"):
            tell = watch_session()  # before ray.init, so a kill inside it is covered too
            # "local" starts a cluster even where RAY_ADDRESS or a `ray start` names one: the
            # watchdog must only ever end a session this process started.
            context = ray.init(
                address="local",
                num_cpus=num_cpus,
                object_store_memory=object_store_memory,
                include_dashboard=False,
                log_to_driver=False,
            )
            tell(context.address_info["session_dir"])
        else:
            ray.init(address=address, log_to_driver=False)
    return ray


# The watchdog of a local cluster, a process of its own (stdlib only, so it starts in
# milliseconds). Its stdin is a pipe whose only writer is the driver: end of file means the
# driver is gone, however it ended (SIGKILL included). Ray kills its head processes with the
# driver (PR_SET_PDEATHSIG), but the raylet's DashboardAgent and RuntimeEnvAgent then block
# for a minute or more reporting the raylet's death to the dead GCS, and a worker busy in a
# task can outlive it too. The watchdog ends every process that has a file of the session's
# folder open for writing (each Ray process writes its logs there): SIGTERM, then SIGKILL
# what is left after 3 s, once the driver has exited. Signals go through a pidfd, so a reused
# pid is never signalled.
_WATCHDOG = r"""
import os, re, select, signal, sys, time

driver = os.pidfd_open(int(sys.argv[1]))  # opened while the driver lives: never another process
line = sys.stdin.buffer.readline()
if line.endswith(b"\n"):
    session = os.path.realpath(line.decode().strip()) + os.sep
    sys.stdin.buffer.read()
    in_session = lambda path: path.startswith(session)
else:  # killed inside ray.init: Ray names the session's folder after the driver's pid
    in_session = re.compile(rf"/session_[^/]*_{int(sys.argv[1])}/").search
# The pipe can close before the driver is gone (interpreter shutdown closes it, then finishes):
# wait for the driver's exit, so a driver still alive is never signalled nor left without Ray.
select.select([driver], [], [])


def writes_to_session(pid):
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if in_session(os.readlink(f"/proc/{pid}/fd/{fd}")):
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                fields = dict(row.split(":", 1) for row in info if ":" in row)
            flags = int(fields["flags"], 8)
            if flags & (os.O_WRONLY | os.O_RDWR):
                return True
    return False


def members():
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            pidfd = os.pidfd_open(int(name))
        except OSError:
            continue
        try:
            if writes_to_session(name):
                found[int(name)] = pidfd
                continue
        except OSError:
            pass
        os.close(pidfd)
    return found


def signal_all(sig):
    pids = members()
    for pidfd in pids.values():
        try:
            signal.pidfd_send_signal(pidfd, sig)
        except OSError:
            pass
        os.close(pidfd)
    return bool(pids)


for sig in (signal.SIGTERM, signal.SIGKILL):
    if not signal_all(sig):
        break
    for _ in range(30):
        time.sleep(0.1)
        if not signal_all(0):
            sys.exit(0)
"""
# The watchdogs of the local clusters this process started: their pipes stay open until it ends.
_WATCHDOGS: list[subprocess.Popen[bytes]] = []


def watch_session(session_dir: str | None = None) -> Callable[[str], None]:
    """Start the watchdog that ends this process's Ray session once this process is gone
    (Linux: it reads /proc; elsewhere Ray's own clean-up is all there is). Started before
    ``ray.init``, it is told the session's folder by the function it returns (or by
    ``session_dir``); killed before that, it ends the processes writing into
    ``session_*_<this pid>``, the folder Ray names after its driver. A child forked from this
    process without exec holds the pipe too: the session then ends after both."""
    if not sys.platform.startswith("linux"):
        return lambda folder: None
    watchdog = subprocess.Popen(
        [sys.executable, "-S", "-c", _WATCHDOG, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C or a kill of the driver's group spares it
    )
    _WATCHDOGS.append(watchdog)

    def tell(folder: str) -> None:
        pipe = cast(IO[bytes], watchdog.stdin)  # stdin=PIPE
        pipe.write(f"{folder}\n".encode())
        pipe.flush()

    if session_dir is not None:
        tell(session_dir)
    return tell


def _latemm_error(exc: BaseException) -> LatemmError | None:
    """The LatemmError a Ray error carries (a worker's InputError naming a row), if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, LatemmError):
            return current
        stack += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


# ------------------------------------------------------------------------------ encoding
def load_named_encoder(name: str, model_dtype: str = "auto") -> Encoder:
    """``load_encoder`` on the worker's device (Ray sets CUDA_VISIBLE_DEVICES for GPU actors)."""
    from latemm.encoders import load_encoder

    if model_dtype == "auto":
        return load_encoder(name)
    import torch

    return load_encoder(name, dtype=getattr(torch, model_dtype))


class EncodeBlocks:
    """A Ray Data actor: encodes the blocks of the corpus it is handed (one encoder per actor).

    ``loader`` builds the encoder in the actor (a name and dtype, or any picklable callable);
    None passes precomputed embeddings through (checked, and given their shard)."""

    def __init__(
        self,
        loader: Callable[[], Encoder] | None,
        columns: Columns,
        source: str,
        pool_factor: int,
        num_shards: int | None,
        threads: int,
        on_empty: str = "skip",
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.encoder = loader() if loader is not None else None
        self.columns, self.source = columns, Path(source)
        self.pool_factor, self.num_shards = pool_factor, num_shards
        self.on_empty = on_empty

    def _encode(self, table: pa.Table) -> pa.Table:
        """``pipeline.encode_corpus`` on the block (through a scratch Parquet file): the same
        checks, rejects of unreadable rows (``on_empty``), pooling and output columns."""
        import tempfile

        import pyarrow.parquet as pq

        with tempfile.TemporaryDirectory(prefix="latemm-ray-") as tmp:
            block, out = Path(tmp) / "block.parquet", Path(tmp) / "encoded.parquet"
            pq.write_table(table, block)
            encode_corpus(
                block,
                out,
                encoder=self.encoder,  # type: ignore[arg-type]
                columns=self.columns,
                on_empty=self.on_empty,
                batch_size=max(1, table.num_rows),
                pool_factor=self.pool_factor,
                progress=False,
            )
            return pq.read_table(out)

    def __call__(self, table: pa.Table) -> pa.Table:
        # Ray Data blocks do not carry file row numbers: errors name the doc_id and the row
        # within the block.
        where = Path(f"{self.source} (a Ray block)")
        batch = table_batch(table, columns=self.columns, kind="corpus", source=where, first_row=0)
        if self.encoder is None:
            out = table  # precomputed embeddings, validated by table_batch
        else:
            out = self._encode(table)
        if self.num_shards is not None:
            ids = out.column("doc_id").to_pylist() if self.encoder is not None else batch.ids
            out = out.append_column(
                SHARD_COLUMN, pa.array(assign_shards(ids, self.num_shards), pa.int32())
            )
        return out


def _parquet_files(corpus: Path) -> list[str]:
    files = open_dataset(corpus).files
    if not files:
        raise InputError(f"{corpus} holds no Parquet files")
    return [str(f) for f in files]


# CPUs a read or write task of the Parquet files reserves: the encoder actors take the rest.
IO_CPUS = 0.25


def _workers(ray: ModuleType, workers: int | None) -> tuple[int, int, float]:
    """(encoder replicas, GPUs per replica, CPUs per replica): one per GPU where the cluster
    has GPUs, else one per CPU, unless ``workers`` says otherwise. CPU replicas share what the
    reading and writing tasks leave, so that the pipeline cannot starve itself of CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    n = workers or gpus or max(1, int(cpus))
    # Ray Data's file-listing task takes one whole CPU of its own.
    per_actor = min(1.0, max(0.01, (cpus - 1.0) / n))
    return n, (1 if gpus else 0), round(per_actor, 2)


# Over 60 lines on purpose: one Ray Data pipeline (read, actor pool, write, commit) declared in order.
def encode_ray(
    corpus: str | Path,
    out: str | Path,
    *,
    encoder: str | Callable[[], Encoder] | None,
    columns: Columns | None = None,
    batch_size: int = 64,
    pool_factor: int = 1,
    num_shards: int | None = None,
    address: str | None = "local",
    workers: int | None = None,
    model_dtype: str = "auto",
    on_empty: str = "skip",
    progress: bool = False,
) -> int:
    """Encode a corpus (file or folder of Parquet files) on a Ray cluster into ``out``, a folder
    of Parquet files with an ``embedding`` column; with ``num_shards``, one Hive partition per
    index shard (``out/latemm_shard=3/...``). ``out`` appears only when every block is written.
    Returns the number of rows written.

    Without an ``encoder`` the corpus must carry an ``embedding`` column: it is checked and
    partitioned by shard as it is."""
    source = Path(corpus)
    cols = columns or Columns()
    first = next(read_batches(source, columns=cols, batch_size=1), None)  # schema checks first
    if encoder is None and (first is None or first.vectors is None):
        raise InputError(
            f"{source} has no {cols.embedding!r} column, so an encoder is needed: pass --encoder "
            "NAME_OR_PATH"
        )
    ray = connect(address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    loader = (
        None
        if encoder is None
        else encoder
        if callable(encoder)
        else _NamedLoader(encoder, model_dtype)
    )
    n, gpus, cpus = _workers(ray, workers)
    files = _parquet_files(source)
    # Blocks of a few batches each, streamed: every replica gets work even from one file.
    # Ray Data's second Parquet reader (the default in 2.60) starts 32 footer-reading actors,
    # 32 Python processes, for every read; the files are listed already, so the first reader's
    # plain read tasks do. The choice is made by the call: the context is restored after it.
    previous = getattr(context, "use_datasource_v2", False)
    context.use_datasource_v2 = False
    try:
        dataset = ray.data.read_parquet(files, ray_remote_args={"num_cpus": IO_CPUS})
    finally:
        context.use_datasource_v2 = previous
    dataset = dataset.repartition(target_num_rows_per_block=4 * batch_size).map_batches(
        EncodeBlocks,
        fn_constructor_kwargs={
            "loader": loader,
            "columns": cols,
            "source": str(source),
            "pool_factor": pool_factor,
            "num_shards": num_shards,
            "threads": max(1, round(cpus)),
            "on_empty": on_empty,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=n),
        num_gpus=gpus,
        num_cpus=cpus,
        max_restarts=RETRIES,
        max_task_retries=RETRIES,
    )
    target = Path(out)
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        dataset.write_parquet(
            str(partial),
            partition_cols=[SHARD_COLUMN] if num_shards is not None else None,
            ray_remote_args={"num_cpus": IO_CPUS},
        )
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors in its own types
        shutil.rmtree(partial, ignore_errors=True)
        found = _latemm_error(exc)
        if found is not None:
            raise type(found)(str(found)) from exc
        raise
    if not partial.is_dir():
        raise InputError(f"{source} has no rows")
    rows = count_rows(partial)
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    partial.rename(target)
    return rows


class _NamedLoader:
    """Picklable: loads an encoder by name in the worker that calls it."""

    def __init__(self, name: str, model_dtype: str) -> None:
        self.name, self.model_dtype = name, model_dtype

    def __call__(self) -> Encoder:
        return load_named_encoder(self.name, self.model_dtype)


def _encoder_info(loader: Callable[[], Encoder]) -> dict[str, Any]:
    return loader().info.to_dict()


def _shard_codebook(
    folders: list[Path],
    corpus: str | Path,
    options: dict[str, Any],
    loader: Callable[[], Encoder],
    draw: dict[str, Any],
) -> tuple[dict[str, Any], DrawnCodebook | None]:
    """``shard_codebook`` with the encoder ``loader`` loads, in the worker that calls it: the
    draw an in-process build of the same corpus makes. The drawn pages' vectors stay here
    (Ray Data encodes every page)."""
    options, drawn = shard_codebook(folders, corpus, options, encoder=loader(), **draw)
    return options, None if drawn is None else DrawnCodebook(drawn.trained, {})


def _index_shard(partition: str, shard_dir: str, options: dict[str, Any]) -> tuple[int, int, int]:
    report = index_corpus(partition, shard_dir, progress=False, **options)
    return report.added, report.skipped, report.rejected


# Over 60 lines on purpose: one Ray pipeline (partition, one task per shard, manifest commit) declared in order.
def index_ray(
    corpus: str | Path,
    index_dir: str | Path,
    *,
    encoder: str | Callable[[], Encoder] | None,
    num_shards: int | None = None,
    address: str | None = "local",
    workers: int | None = None,
    model_dtype: str = "auto",
    columns: Columns | None = None,
    batch_size: int = 64,
    pool_factor: int = 1,
    progress: bool = False,
    **options: Any,
) -> IndexReport:
    """Build (or add to) a sharded index on a Ray cluster: encode with ``encode_ray`` into
    this writer's ``DIR/.staging-XXXX`` partitioned by shard, index every partition in its own Ray task
    (``index_corpus`` with the precomputed embeddings), then commit ``shards.json``.

    Options (``dtype``, ``faiss_factory``, ``on_existing``, ``commit_every``) are
    ``index_corpus``'s; ``num_shards`` defaults to the existing index's."""
    root = Path(index_dir)
    check_new_folder(root)  # never among a user's files, not even a lock file
    # One writer at a time (DIR/LOCK), each with its own staging folder.
    with writer_lock(root), staging_dir(root) as staging:
        return _index_ray(
            corpus, root, encoder, num_shards, address, workers, model_dtype, columns,
            batch_size, pool_factor, progress, staging, options,
        )  # fmt: skip


def _index_ray(
    corpus: str | Path,
    root: Path,
    encoder: str | Callable[[], Encoder] | None,
    num_shards: int | None,
    address: str | None,
    workers: int | None,
    model_dtype: str,
    columns: Columns | None,
    batch_size: int,
    pool_factor: int,
    progress: bool,
    staging: Path,
    options: dict[str, Any],
) -> IndexReport:
    n, existing = prepare(root, num_shards)
    ray = connect(address)
    info = None
    loader = None
    if encoder is not None:
        loader = encoder if callable(encoder) else _NamedLoader(encoder, model_dtype)
        # The identity recorded in shards.json; loading it once in a worker keeps the driver
        # free of model weights.
        info = ray.get(ray.remote(num_cpus=1)(_encoder_info).remote(loader))
        if existing is not None:
            check_recorded(existing.config.encoder, info, root)
    embedded = staging / "embeddings"
    encode_ray(
        corpus,
        embedded,
        encoder=loader,
        columns=columns,
        batch_size=batch_size,
        pool_factor=pool_factor,
        num_shards=n,
        address=address,
        workers=workers,
        on_empty=options.get("on_empty", "skip"),
        progress=progress,
    )
    if existing is None:
        record_building(root, n)
    task = ray.remote(num_cpus=1, max_retries=RETRIES)(_index_shard)
    # Encoded partitions have canonical column names; a precomputed corpus keeps the user's
    # names and its pooling is still to do.
    codebook = None
    if existing is None:  # every shard codes with one residual codebook, as in-process shards
        folders = [root / "shards" / shard_name(s) for s in range(n)]
        draw = {"columns": columns, "batch_size": batch_size, "pool_factor": pool_factor}
        if loader is None:
            options, codebook = shard_codebook(folders, corpus, options, **draw)
        else:  # the draw encodes pages: in a worker, which loads the model
            drawn = ray.remote(num_cpus=1)(_shard_codebook)
            options, codebook = ray.get(drawn.remote(folders, corpus, options, loader, draw))
    per_shard = {
        **options,
        "batch_size": batch_size,
        "columns": columns if encoder is None else None,
        "pool_factor": pool_factor if encoder is None else 1,
        "codebook": codebook,
    }
    futures = {
        shard: task.remote(
            str(embedded / f"{SHARD_COLUMN}={shard}"),
            str(root / "shards" / shard_name(shard)),
            per_shard,
        )
        for shard in range(n)
        if (embedded / f"{SHARD_COLUMN}={shard}").is_dir()
    }
    added = skipped = rejected = 0
    for shard, future in futures.items():
        try:
            got_added, got_skipped, got_rejected = ray.get(future)
        except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors in its own types
            found = _latemm_error(exc)
            kind: type[LatemmError] = type(found) if found is not None else LatemmError
            raise kind(
                f"{root}: indexing shard {shard_name(shard)} failed: {found or exc}"
            ) from exc
        added, skipped = added + got_added, skipped + got_skipped
        rejected += got_rejected
    manifest = commit_shards(root, n, encoder_info=info, existing=existing)
    return IndexReport(added, skipped, sum(manifest.documents), manifest.generation, rejected)


# ------------------------------------------------------------------------------ serving
def _shard_value(ray: Any, root: Path, label: str, future: Any) -> Any:
    """The value of a shard actor's call; a dead actor or a failed call names shard ``label``."""
    try:
        return ray.get(future)
    except ray.exceptions.RayActorError as exc:
        raise ShardUnavailableError(
            f"{root}: shard {label}'s actor died and was not restarted ({RETRIES} restarts "
            "allowed); no partial result is returned. Check the worker's memory and logs, then "
            f"search again ({exc.__class__.__name__})"
        ) from exc
    except ray.exceptions.RayTaskError as exc:
        found = _latemm_error(exc)
        if found is None:
            raise
        raise type(found)(f"shard {label}: {found}") from exc


class ShardServer:
    """A Ray actor's state: the vector fields of one folder (a shard of a fields collection,
    or an unsharded fields index), each opened memory-mapped as a ``field_parts.IndexPart``.

    Every call names the field and the generation the coordinator opened: an actor restarted
    by Ray opens the field again, and a field that changed meanwhile is an error, never a
    result from another state of the index."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.parts: dict[str, Any] = {}

    def open(self, spec: dict[str, Any], legacy: bool) -> tuple[str, int, Any, int]:
        """Open (again) a field: its sub-index's path, generation, config and documents."""
        from latemm.index.fields import FieldSpec, open_field
        from latemm.retrieval.field_parts import IndexPart

        index = open_field(self.folder, FieldSpec.from_dict(spec), legacy=legacy)
        self.parts[spec["name"]] = IndexPart(index)
        return str(index.path), index.generation, index.config, len(index)

    def call(
        self,
        spec: dict[str, Any],
        legacy: bool,
        generation: int,
        method: str,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """``IndexPart.method(*args, **kwargs)`` on field ``spec`` at ``generation``."""
        part = self.parts.get(spec["name"])
        if part is None or part.index.generation != generation:
            path, now, _, _ = self.open(spec, legacy)
            if now != generation:
                from index_store.errors import IndexLockedError

                raise IndexLockedError(
                    f"{path} is at generation {now}, not {generation} as when the search "
                    "opened it (a writer changed it meanwhile); search again"
                )
            part = self.parts[spec["name"]]
        return getattr(part, method)(*args, **kwargs)


# Arrays of at least this many items go to the object store once per search step (``shared``);
# the last SHARED_KEPT of them are kept there.
SHARED_SIZE = 10_000
SHARED_KEPT = 16


class ShardActors:
    """One ``ShardServer`` actor per folder of a collection (each shard), started when
    ``FieldRetriever`` opens a vector field there (``open``, its ``actors`` hook); restarted up
    to ``RETRIES`` times when it dies, its pending call retried. A part's calls return at
    once (``field_parts.Pending``), so every shard works at the same time."""

    def __init__(self, root: str | Path, *, address: str | None = "local") -> None:
        self.root, self.address = Path(root), address
        self.actors: dict[Path, Any] = {}
        self._refs: dict[int, tuple[Any, Any]] = {}  # id -> (array, its object-store copy)
        self.ray: Any = None  # connected at the first field opened: a refused request starts none

    def _server(self) -> Any:
        if self.ray is None:
            self.ray = connect(self.address)
            self.server = self.ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES)(
                ShardServer
            )
        return self.server

    def open(self, folder: str | Path, spec: Any, *, legacy: bool = False) -> ActorPart:
        """Field ``spec`` (a ``fields.FieldSpec``) of ``folder``, opened in its actor."""
        where = Path(folder)
        if where not in self.actors:
            self.actors[where] = self._server().remote(str(where))
        actor, recorded = self.actors[where], spec.to_dict()
        path, generation, config, documents = self.get(where, actor.open.remote(recorded, legacy))
        part = ActorPart(self, where, actor, recorded, legacy, Path(path), generation, config)
        part.documents = documents
        return part

    def get(self, folder: Path, future: Any) -> Any:
        """The value of an actor's call; a dead actor or a failed call names its shard."""
        label = self.root.name if folder == self.root else folder.name
        return _shard_value(self.ray, self.root, label, future)

    def shared(self, value: Any) -> Any:
        """``value`` as a call's argument: a large array, which the coordinator passes to every
        shard's actor (the queries, their FDEs, the pooled doc ids), goes to the object store
        once, not once per shard. The array is held with its copy, so its id names it."""
        import numpy as np

        if not isinstance(value, np.ndarray) or value.size < SHARED_SIZE:
            return value
        key = id(value)
        if key not in self._refs:
            if len(self._refs) >= SHARED_KEPT:
                del self._refs[next(iter(self._refs))]  # the oldest
            self._refs[key] = (value, self.ray.put(value))
        return self._refs[key][1]

    def close(self) -> None:
        """End the actors (the cluster stays: ``connect`` may have joined a running one)."""
        for actor in self.actors.values():
            self.ray.kill(actor)
        self.actors.clear()


class _RayPending(Pending):
    """An actor's call under way; ``result()`` waits for it (``ShardActors.get``)."""

    def __init__(self, owner: ShardActors, folder: Path, future: Any) -> None:
        self.owner, self.folder, self.future = owner, folder, future

    def result(self) -> Any:
        return self.owner.get(self.folder, self.future)


class ActorPart:
    """A vector field's part served by a ``ShardServer`` actor: the phases of
    ``field_parts.PartPhases``, each started at once and returned as a ``Pending``, and the
    ``path``, ``generation`` and ``config`` of the sub-index the actor opened."""

    def __init__(
        self,
        owner: ShardActors,
        folder: Path,
        actor: Any,
        spec: dict[str, Any],
        legacy: bool,
        path: Path,
        generation: int,
        config: Any,
    ) -> None:
        self.owner, self.folder, self.actor = owner, folder, actor
        self.spec, self.legacy = spec, legacy
        self.path, self.generation, self.config = path, generation, config
        self.documents = 0  # the documents of the sub-index the actor opened

    def __len__(self) -> int:
        return self.documents

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Pending:
        args = tuple(self.owner.shared(a) for a in args)
        future = self.actor.call.remote(
            self.spec, self.legacy, self.generation, method, *args, **kwargs
        )
        return _RayPending(self.owner, self.folder, future)

    def allowed(self, where: str | None, hidden: frozenset[str], store: Any = None) -> Pending:
        return self._call("allowed", where, hidden, store)

    def first_stage(
        self, matrix: Any, n_cand: int, masks: Any, *, nprobe: int, ef_search: int
    ) -> Pending:
        return self._call("first_stage", matrix, n_cand, masks, nprobe=nprobe, ef_search=ef_search)

    def locate(self, pool: Any) -> Pending:
        return self._call("locate", pool)

    def rescore(
        self,
        flat: Any,
        offsets: Any,
        cands: Any,
        device: str | None,
        k: int | None = None,
        refine_depth: int | None = None,
    ) -> Pending:
        return self._call("rescore", flat, offsets, cands, device, k, refine_depth)

    def bounded(self, flat: Any, offsets: Any, cands: Any, device: str | None) -> Pending:
        return self._call("bounded", flat, offsets, cands, device)

    def rescore_chosen(
        self, flat: Any, offsets: Any, cands: Any, chosen: Any, device: str | None
    ) -> Pending:
        return self._call("rescore_chosen", flat, offsets, cands, chosen, device)

    def pages(self, doc_ids: Any, allow_files: Any) -> Pending:
        return self._call("pages", list(doc_ids), tuple(allow_files))
