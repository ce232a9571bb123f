"""The ``latemm`` command line: ingest, convert, encode, index, search, eval, show, info, delete,
compact, verify, quickstart."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from index_store.errors import InputError, LatemmError

if TYPE_CHECKING:
    from latemm.index.collection import Collection


def _columns(args: argparse.Namespace, id_default: str) -> Any:
    from latemm.data.io import Columns

    return Columns(
        id=args.id_column or id_default,
        image=args.image_column,
        text=args.text_column,
        embedding=args.embedding_column,
    )


def _add_column_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id-column", default=None, help="id column (default doc_id / query_id)")
    parser.add_argument(
        "--image-column", default="image", help="column of page images (default: %(default)s)"
    )
    parser.add_argument(
        "--text-column", default="text", help="column of page or query text (default: %(default)s)"
    )
    parser.add_argument(
        "--embedding-column",
        default="embedding",
        help="column of precomputed vectors, T x d (default: %(default)s)",
    )


def _encoder(args: argparse.Namespace, name: str | None, index_dir: str | None = None) -> Any:
    """The encoder named by --encoder (with --encoder-kind, --instruction, --dim, --pooling),
    else the one the index recorded, rebuilt with its recorded options (None if neither), on
    --device (several comma-separated devices encode in parallel) with --model-dtype."""
    from latemm.encoders import load_encoder

    devices = args.device.split(",") if args.device else None
    options = {
        key: getattr(args, key, None)
        for key in ("instruction", "dim", "pooling", "quantize")
        if getattr(args, key, None) is not None
    }
    kind = getattr(args, "encoder_kind", None)
    if name is None and (options or kind):
        flags = ", ".join(
            f"--{k.replace('_', '-')}" for k in [*options, *(["encoder_kind"] if kind else [])]
        )
        raise InputError(
            f"{flags} configure the encoder named by --encoder; without --encoder the index's "
            "recorded encoder is rebuilt with its recorded options"
        )
    if name is None and index_dir is not None:
        from latemm.index.collection import open_collection

        recorded = open_collection(index_dir).recorded_encoder()
        if recorded:
            _loading(args, str(recorded.get("name_or_path", "the recorded encoder")))
            return load_encoder(recorded, devices=devices, dtype=_model_dtype(args))
    if name is None:
        return None
    _loading(args, name)
    from latemm.encoders import PACKAGED, packaged_encoder

    try:
        name = packaged_encoder(name)
    except InputError as exc:
        raise InputError(f"--encoder {name!r}: {exc}") from exc
    if not Path(name).exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise InputError(
            f"--encoder {name}: no such folder, and not a hub id (owner/name) or a packaged "
            f"encoder ({', '.join(PACKAGED)}); give the folder of a saved model, a hub id or "
            "minilm"
        )
    try:
        return load_encoder(name, kind=kind, devices=devices, dtype=_model_dtype(args), **options)
    except LatemmError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers/hub raise many types for a bad model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(
            f"--encoder {name}: cannot load it ({type(exc).__name__}: {first[:200]}); give a "
            "local model folder, a hub id reachable from here, or minilm"
        ) from exc


def _loading(args: argparse.Namespace, name: str) -> None:
    """Say what the seconds before the first progress bar are spent on."""
    if not getattr(args, "quiet", False):
        print(f"latemm {args.command}: loading encoder {name} ...", file=sys.stderr, flush=True)


def _add_encoder_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--encoder-kind",
        default=None,
        choices=["multi", "single"],
        help="multi: late interaction (default); single: one vector per item (DSE, "
        "Qwen3-VL-Embedding, or a mean-pooled text model)",
    )
    parser.add_argument("--instruction", default=None, help="query instruction (single kind)")
    parser.add_argument("--dim", type=int, default=None, help="Matryoshka dimension (single)")
    parser.add_argument(
        "--pooling", default=None, choices=["last", "mean"], help="single kind: token pooling"
    )
    parser.add_argument(
        "--quantize",
        default=None,
        choices=["int8"],
        help="text encoders on the CPU: int8 dynamic quantisation of the model's linear layers, "
        "faster encoding at a small exactness cost (README, text encoders on the CPU); recorded "
        "in the index, so searches encode queries the same way (default: float32)",
    )


def _model_dtype(args: argparse.Namespace) -> Any:
    """--model-dtype as a torch dtype; None lets the model choose (bf16 on GPU, float32 on CPU)."""
    if args.model_dtype == "auto":
        return None
    import torch

    return getattr(torch, args.model_dtype)


def cmd_index(args: argparse.Namespace) -> int:
    from latemm.index.collection import index_route
    from latemm.index.pipeline import index_corpus
    from latemm.index.sharded import index_sharded

    start = time.perf_counter()
    options = dict(
        columns=_columns(args, "doc_id"),
        dtype=args.dtype,
        faiss_factory=args.faiss,
        commit_every=args.commit_every,
        on_existing=args.on_existing,
        on_empty=args.on_empty,
        batch_size=args.batch_size,
        pool_factor=args.pool_factor,
        progress=not args.quiet,
        refine=args.refine,
        refine_depth=args.refine_depth,
        **({"keep_images": True} if args.keep_images else {}),
    )
    route = index_route(
        args.index,
        encoder=args.encoder is not None,
        fields=bool(args.field),
        num_shards=args.shards,
        ray=args.ray is not None,
    )  # before any model is loaded
    if route in ("fields", "field_shards"):  # without --field: the fields it records
        return _index_fields(args, start, options, sharded=route == "field_shards")
    if route == "ray":
        from latemm.runs.distributed import index_ray

        report = index_ray(
            args.corpus,
            args.index,
            encoder=_encoder_name(args, args.index),
            num_shards=args.shards,
            address=args.ray,
            workers=args.workers,
            model_dtype=args.model_dtype,
            **options,
        )
    elif route == "sharded":
        report = index_sharded(
            args.corpus,
            args.index,
            num_shards=args.shards,
            encoder=_encoder(args, args.encoder, args.index),
            **options,
        )
    else:
        report = index_corpus(
            args.corpus, args.index, encoder=_encoder(args, args.encoder, args.index), **options
        )
    if report.rejected:
        print(
            f"latemm index: skipped {report.rejected} rows with nothing the encoder can read "
            f"(blank pages, empty text); `latemm info {args.index}` lists them",
            file=sys.stderr,
        )
    seconds = round(time.perf_counter() - start, 1)
    _summary(
        args,
        f"added {report.added} documents, skipped {report.skipped} already indexed or rejected, "
        f"rejected {report.rejected}; {report.documents} in {args.index} "
        f"(generation {report.generation}) in {seconds:.1f}s",
        index=str(args.index),
        added=report.added,
        skipped=report.skipped,
        rejected=report.rejected,
        documents=report.documents,
        generation=report.generation,
        seconds=seconds,
    )
    return 0


def _summary(args: argparse.Namespace, text: str, **values: Any) -> None:
    """A command's closing line, or with --json the same facts as one JSON object."""
    print(json.dumps(values) if getattr(args, "json_summary", False) else text)


def _encoder_name(args: argparse.Namespace, index_dir: str | None) -> str | None:
    """--encoder, else the encoder the (sharded) index recorded, as a name: Ray workers load it."""
    if getattr(args, "quantize", None):
        raise InputError(
            "--quantize does not reach Ray workers (they load the encoder by name); drop --ray"
        )
    if args.encoder is not None:
        return str(args.encoder)
    if index_dir is None:
        return None
    from latemm.index.collection import open_collection

    recorded = open_collection(index_dir).recorded_encoder()
    return str(recorded["name_or_path"]) if recorded else None


def _index_fields(
    args: argparse.Namespace, start: float, options: dict[str, Any], *, sharded: bool = False
) -> int:
    """``latemm index --field NAME=ENCODER ...``: a multi-field index (latemm.index.fields), sharded
    with ``--shards N`` (latemm.index.field_shards)."""
    from functools import partial

    from latemm.index.field_shards import index_field_shards
    from latemm.index.fields import index_fields, parse_field

    if getattr(args, "quantize", None):
        raise InputError("--quantize applies to one --encoder, not to --field encoders; drop it")
    kinds = dict(_pairs(args.field_kind or [], "--field-kind"))
    build = partial(index_field_shards, num_shards=args.shards) if sharded else index_fields
    counts = build(
        args.corpus,
        args.index,
        [parse_field(text, kinds) for text in args.field] if args.field else None,
        device=args.device.split(",")[0] if args.device else None,
        **options,
    )
    fields = ", ".join(f"{name}: {n} documents" for name, n in counts.items())
    rejected = _field_rejects(args.index, list(counts), sharded=sharded)
    if rejected:
        print(
            "latemm index: pages a field cannot read (blank pages, empty text) are left out of "
            f"it and recorded ({', '.join(f'{n}: {c}' for n, c in rejected.items())}); "
            f"`latemm info {args.index}` lists them",
            file=sys.stderr,
        )
    seconds = round(time.perf_counter() - start, 1)
    _summary(
        args,
        f"indexed {args.index} ({fields}) in {seconds:.1f}s",
        index=str(args.index),
        fields=counts,
        rejected=rejected,
        seconds=seconds,
    )
    return 0


def _field_rejects(index_dir: str, names: list[str], *, sharded: bool = False) -> dict[str, int]:
    """Field name -> pages recorded as unreadable by it (nonzero only); over every shard of a
    sharded collection."""
    from index_store import Index
    from latemm.index.fields import open_field, read_fields

    if sharded:
        from latemm.index.field_shards import read_field_shards, shard_layout

        total: dict[str, int] = {}
        for _, folder, _ in shard_layout(index_dir, read_field_shards(index_dir)):
            for name, count in _field_rejects(str(folder), names).items():
                total[name] = total.get(name, 0) + count
        return total
    out = {}
    for spec in read_fields(index_dir).fields:
        if spec.name not in names:
            continue
        if spec.kind == "bm25":
            count = int(spec.options.get("rejected", 0))
        elif not (Path(index_dir) / "fields" / spec.name / "manifest.json").is_file():
            continue  # a field that holds no page (yet): nothing recorded
        else:
            opened = open_field(index_dir, spec, verify="none")
            count = int(opened.stats().get("rejected", 0)) if isinstance(opened, Index) else 0
        if count:
            out[spec.name] = count
    return out


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InputError(f"{flag} {item!r}: expected NAME=VALUE")
        out.append((name.strip(), value.strip()))
    return out


def cmd_encode(args: argparse.Namespace) -> int:
    from latemm.index.pipeline import encode_corpus

    start = time.perf_counter()
    if args.ray is not None:
        from latemm.runs.distributed import encode_ray

        rows = encode_ray(
            args.corpus,
            args.out,
            encoder=args.encoder,
            columns=_columns(args, "doc_id"),
            batch_size=args.batch_size,
            pool_factor=args.pool_factor,
            num_shards=args.shards,
            address=args.ray,
            workers=args.workers,
            model_dtype=args.model_dtype,
            on_empty=args.on_empty,
        )
        print(f"encoded {rows} documents into {args.out} in {time.perf_counter() - start:.1f}s")
        return 0
    if args.shards is not None:
        raise InputError("--shards splits the output of a Ray encode: add --ray (or --ray local)")
    report = encode_corpus(
        args.corpus,
        args.out,
        encoder=_encoder(args, args.encoder),
        columns=_columns(args, "doc_id"),
        on_empty=args.on_empty,
        batch_size=args.batch_size,
        pool_factor=args.pool_factor,
        progress=not args.quiet,
    )
    if report.rejects is not None:
        print(
            f"latemm encode: skipped {report.rejected} rows with nothing the encoder can read "
            f"(blank pages, empty text); listed in {report.rejects}",
            file=sys.stderr,
        )
    print(
        f"encoded {report.written} documents into {args.out} in {time.perf_counter() - start:.1f}s"
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from latemm.index.collection import open_collection
    from latemm.runs.jobs import search_file

    if args.allow_files and not args.rerank:
        raise InputError(
            "--allow-files names where the reranker may read page images; it applies only "
            "with --rerank MODEL (add it, or leave --allow-files out)"
        )
    start = time.perf_counter()
    named = (
        args.fields is not None
        or args.query_column
        or args.weights
        or args.rescore_field
        or args.preset
        or args.fusion
        or args.normalization
        or args.rrf_k
    )
    collection = open_collection(args.index)
    _check_index_kind(args, named, collection)
    if named or collection.named_fields:
        return _search_fields(args, start)
    _check_search_target(args, collection)  # before any model is loaded
    encoder = _encoder(args, args.encoder, args.index)
    reranker = None
    if args.rerank:
        from latemm.retrieval.reranker import MLLMReranker

        reranker = MLLMReranker(
            args.rerank,
            template=args.rerank_template,
            adapter=args.rerank_adapter,
            device=args.device.split(",")[0] if args.device else None,
            dtype=_model_dtype(args),
            cache=args.rerank_cache,
            allow_files=args.allow_files,
        )
    run = search_file(
        args.index,
        args.queries,
        args.out,
        encoder=encoder,
        columns=_columns(args, "query_id"),
        k=args.k,
        candidates=args.candidates,
        where=args.where,
        batch_size=args.batch_size,
        trec=args.trec,
        progress=not args.quiet,
        reranker=reranker,
        rerank_depth=args.rerank_depth,
        rerank_fusion=args.rerank_fusion,
        ray=args.ray,
        refine_depth=args.refine_depth,
        first_stage=args.first_stage,
    )
    queries = len(set(run.column("query_id").to_pylist()))
    elapsed = time.perf_counter() - start
    _summary(
        args,
        f"searched {queries} queries in {elapsed:.1f}s ({queries / max(elapsed, 1e-9):.1f} "
        f"queries/s); wrote {args.out}",
        queries=queries,
        seconds=round(elapsed, 1),
        out=str(args.out),
    )
    return 0


def _check_index_kind(args: argparse.Namespace, named: Any, collection: Collection) -> None:
    """Options that cannot apply to this kind of index are an error naming the option."""
    if collection.sharded and not collection.named_fields and named:
        given = [
            flag
            for flag, value in (
                ("--fields", args.fields),
                ("--fusion", args.fusion),
                ("--weights", args.weights),
                ("--normalization", args.normalization),
                ("--rrf-k", args.rrf_k),
                ("--rescore-field", args.rescore_field),
                ("--preset", args.preset),
            )
            if value
        ]
        raise InputError(
            f"{', '.join(given)}: {args.index} is a sharded index with one field (no named "
            "fields to fuse); leave the option out"
        )
    if args.ray is not None and (named or collection.named_fields) and not collection.sharded:
        # One actor would serve the whole index: no work spread, the index mapped once more.
        raise InputError(
            f"--ray serves the shards of a sharded index or fields collection; {args.index} is "
            "an unsharded multi-field index, searched in this process: leave out --ray, or "
            "build it with --shards N to serve its shards from Ray actors"
        )


def _check_search_target(args: argparse.Namespace, collection: Collection) -> None:
    """The search's arguments and index, checked before an encoder or reranker is loaded."""
    from latemm.runs.jobs import check_search_args

    check_search_args(
        args.queries, args.out, k=args.k, candidates=args.candidates, batch_size=args.batch_size
    )
    if args.rerank and args.rerank_depth < 1:
        raise InputError(f"--rerank-depth must be a positive integer, got {args.rerank_depth}")
    collection.check_searchable("`latemm index CORPUS --index DIR`")
    if args.ray is not None and not collection.sharded:
        raise InputError(
            f"--ray serves a sharded index; {args.index} is an ordinary one. Build a sharded "
            "index with `latemm index CORPUS --index DIR --shards N`, or leave out --ray"
        )
    if not Path(args.queries).exists():
        raise InputError(f"{args.queries} does not exist: give a queries Parquet file")


def _search_fields(args: argparse.Namespace, start: float) -> int:
    """``latemm search`` over named fields (latemm.retrieval.field_search)."""
    from latemm.ranking.fusion import parse_weights
    from latemm.runs.jobs import search_fields_file

    if args.encoder:
        raise InputError(
            "--encoder names one model; with named fields each field's recorded encoder is used"
        )
    if args.refine_depth is not None:
        raise InputError(
            "--refine-depth applies to an ordinary index; fused fields score every candidate "
            "from a field's refine copy"
        )
    if args.ray is not None and args.device and not args.device.startswith("cpu"):
        raise InputError(
            f"--device {args.device}: with --ray the shards' actors score on CPUs (no GPU is "
            "reserved for them); leave out --device or --ray"
        )
    _check_fusion_flags(args)
    run = search_fields_file(
        args.index,
        args.queries,
        args.out,
        k=args.k,
        candidates=args.candidates,
        where=args.where,
        batch_size=args.batch_size,
        trec=args.trec,
        progress=not args.quiet,
        columns=_columns(args, "query_id"),
        fields=[f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else None,
        fusion=args.fusion,  # None: the index's tuned default, else auto
        weights=parse_weights(args.weights) if args.weights else None,
        rescore_fields=args.rescore_field,
        preset=args.preset,
        **{
            name: value
            for name, value in (("normalization", args.normalization), ("rrf_k", args.rrf_k))
            if value is not None
        },
        device=args.device.split(",")[0] if args.device else None,
        reranker=_reranker(args),
        rerank_depth=args.rerank_depth,
        rerank_fusion=args.rerank_fusion,
        query_columns=_query_columns(args.query_column),
        actors=_field_actors(args.ray),
        first_stage=args.first_stage,
    )
    queries = len(set(run.column("query_id").to_pylist()))
    elapsed = time.perf_counter() - start
    _summary(
        args,
        f"searched {queries} queries in {elapsed:.1f}s over fields; wrote {args.out}",
        queries=queries,
        seconds=round(elapsed, 1),
        out=str(args.out),
    )
    return 0


def _field_actors(ray: str | None) -> Any:
    """With ``--ray``: what serves a fields collection's vector fields, one Ray actor per shard
    (``latemm.runs.distributed.ShardActors``); None searches in this process."""
    if ray is None:
        return None
    from functools import partial

    from latemm.runs.distributed import ShardActors

    return partial(ShardActors, address=ray)


def _query_columns(items: list[str] | None) -> dict[str, str] | None:
    """``--query-column FIELD=COLUMN`` flags as a mapping; a field named twice is refused."""
    out: dict[str, str] = {}
    for name, column in _pairs(items or [], "--query-column"):
        if name in out:
            raise InputError(
                f"--query-column names field {name!r} twice ({out[name]!r} and {column!r}); "
                "give each field one column"
            )
        out[name] = column
    return out or None


def _check_fusion_flags(args: argparse.Namespace) -> None:
    """Refuse fusion flags that name nothing or cannot apply, rather than ignore them."""
    if args.fields is not None and not [f for f in args.fields.split(",") if f.strip()]:
        raise InputError(
            f"--fields {args.fields!r} names no field; give NAME[,NAME...] or leave --fields "
            "out to search every field"
        )
    fusion = args.fusion or "auto"  # the default
    if args.normalization is not None and fusion != "weighted":
        raise InputError(
            f"--normalization {args.normalization} applies to --fusion weighted, not {fusion}; "
            "use --fusion weighted or drop --normalization"
        )
    if args.rrf_k is not None and fusion == "weighted":
        raise InputError(
            "--rrf-k applies to --fusion rrf and auto, not weighted; drop --rrf-k or use "
            "--fusion rrf"
        )


def _reranker(args: argparse.Namespace) -> Any:
    if not args.rerank:
        return None
    from latemm.retrieval.reranker import MLLMReranker

    return MLLMReranker(
        args.rerank,
        template=args.rerank_template,
        adapter=args.rerank_adapter,
        device=args.device.split(",")[0] if args.device else None,
        dtype=_model_dtype(args),
        cache=args.rerank_cache,
        allow_files=args.allow_files,
    )


def cmd_info(args: argparse.Namespace) -> int:
    from latemm.api import info

    print(json.dumps(info(args.index), indent=2))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from latemm.api import tune

    report = tune(
        args.index,
        args.queries,
        args.qrels,
        folds=args.folds,
        metric=args.metric,
        seed=args.seed,
        fields=[f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else None,
        candidates=args.candidates,
        save=args.save,
        device=args.device,
    )
    if args.json_summary:
        print(json.dumps(report.to_dict()))
    else:
        print("\n".join(report.lines()))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from latemm.index.collection import open_collection

    ids = list(args.ids or [])
    if args.ids_file:
        if not Path(args.ids_file).is_file():
            raise InputError(f"--ids-file {args.ids_file} does not exist")
        ids += [
            line.strip() for line in Path(args.ids_file).read_text().splitlines() if line.strip()
        ]
    collection = open_collection(args.index)
    found = collection.delete(ids, missing_ok=args.missing_ok)
    every = "every field of " if collection.named_fields else ""
    print(f"deleted {found} documents from {every}{args.index}")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from latemm.api import compact

    state = compact(args.index)
    if "fields" in state:
        fields = ", ".join(f"{name}: {value}" for name, value in state["fields"].items())
        print(f"compacted {args.index} (fields {fields})")
    else:
        print(f"compacted {args.index} (generation {state['generation']})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from latemm.api import verify

    problems = verify(args.index)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{args.index}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.index}: all files match their checksums")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import warnings

    from latemm.runs.metrics import (
        check_metrics,
        compare,
        compare_runs,
        evaluate,
        load_qrels,
        load_run,
        significance_legend,
    )

    check_metrics(args.metrics)
    paths = list(args.runs)
    if args.qrels is None:
        if len(paths) < 2:
            raise InputError(
                "latemm eval needs run file(s) and qrels: RUN [RUN ...] QRELS or --qrels"
            )
        args.qrels = paths.pop()
    qrels = load_qrels(args.qrels)
    runs = {name: load_run(r) for name, r in zip(_run_names(paths), paths, strict=True)}
    if not getattr(args, "quiet", False):
        print(
            "latemm eval: loading ranx's numba-compiled metrics (a fresh environment compiles "
            "them once, which can take minutes; later runs load the cache, ~10 s of CPU)",
            file=sys.stderr,
        )
    with warnings.catch_warnings():  # numba's type-safety notes on ranx's kernels: not ours
        warnings.filterwarnings("ignore", module="numba")
        warnings.filterwarnings("ignore", message=".*[Nn]umba.*")
        results = {name: evaluate(run, qrels, args.metrics) for name, run in runs.items()}
        if len(runs) > 1 and (args.format != "text" or args.test != "student"):
            comparison = compare_runs(
                runs,
                qrels,
                args.metrics,
                test=args.test,
                correction=args.correction,
                alpha=args.alpha,
                permutations=args.permutations,
                seed=args.seed,
            )
            if args.format == "json":
                print(json.dumps(comparison.to_dict(), indent=2))
            else:
                print(comparison.to_latex() if args.format == "latex" else comparison.to_markdown())
        elif len(runs) > 1:
            report = compare(runs, qrels, args.metrics)
            print(report)
            print(significance_legend(report))
        elif args.format == "json":
            print(json.dumps(next(iter(results.values())), indent=2))
        else:
            for metric, value in next(iter(results.values())).items():
                print(f"{metric:>12}  {value:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def _run_names(paths: list[str]) -> list[str]:
    """A unique name per run file: its stem, with as many parent folders as it takes to tell
    runs apart (a/run.parquet and b/run.parquet are a/run and b/run)."""
    resolved = [Path(p).resolve() for p in paths]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise InputError(f"the run file {paths[i]} is given twice; name each run once")
    stems = [Path(p).with_suffix("").parts for p in paths]
    for depth in range(1, max(len(parts) for parts in stems) + 1):
        names = ["/".join(parts[-depth:]) for parts in stems]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def cmd_ingest(args: argparse.Namespace) -> int:
    from latemm.data.ingest import ingest_pdfs

    start = time.perf_counter()
    report = ingest_pdfs(
        args.inputs,
        args.out,
        dpi=args.dpi,
        max_pixels=args.max_pixels,
        images=not args.no_images,
        progress=not args.quiet,
        ocr=args.ocr,
        ocr_engine=args.ocr_engine,
        ocr_workers=args.ocr_workers,
    )
    ocr = ""
    if report.ocr_pages or report.ocr_resumed:
        rate = report.ocr_pages / report.ocr_seconds if report.ocr_seconds else 0.0
        ocr = f"; OCR read {report.ocr_pages} pages ({rate:.2f} pages/s)"
        ocr += f", {report.ocr_resumed} resumed" if report.ocr_resumed else ""
    sources = ", ".join(f"{n} {name}" for name, n in sorted(report.text_sources.items()))
    print(
        f"ingested {report.pages} pages from {report.files} files into {args.out} in "
        f"{time.perf_counter() - start:.1f}s (text: {sources or 'none'}){ocr}; "
        f"{len(report.problems)} problem(s) reported"
    )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from latemm.data.loaders import convert
    from latemm.data.questions import SUFFIXES, write_queries

    if Path(args.source).suffix.lower() in SUFFIXES:  # a file of questions
        if Path(args.out).suffix != ".parquet":
            raise InputError(f"--out {args.out}: questions go into a .parquet file")
        count = write_queries(args.source, args.out)
        print(f"wrote {count} queries (query_id, text) to {args.out}")
        return 0
    done = convert(args.source, args.out, format=args.format, split=args.split)
    print(
        f"wrote {done.documents} documents to {done.corpus}, {done.num_queries} queries to "
        f"{done.queries} and {done.judgements} judgements to {done.qrels}"
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from latemm.runs.show import render

    query_text = None
    if args.queries:
        from latemm.data.io import Columns, read_batches

        for batch in read_batches(args.queries, columns=Columns(id="query_id"), kind="queries"):
            if args.query in batch.ids and "text" in batch.table.column_names:
                query_text = batch.table.column("text")[batch.ids.index(args.query)].as_py()
                break
    encoder = _show_encoder(args) if args.heatmap else None
    qrels = None
    if args.qrels:
        from latemm.runs.metrics import load_qrels

        qrels = load_qrels(args.qrels)
    html = render(
        args.run,
        args.index,
        args.query,
        k=args.k,
        query_text=query_text,
        encoder=encoder,
        allow_files=args.allow_files,
        qrels=qrels,
    )
    # The query id names the default file: anything but letters, digits, '.', '-' and '_'
    # (a '/' would name a folder) becomes '_'.
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", args.query).lstrip(".") or "query"
    out = Path(args.out or f"{Path(args.run).stem}-{safe[:100]}.html")
    out.write_text(html, encoding="utf-8")
    print(f"wrote {out}")
    return 0


def _show_encoder(args: argparse.Namespace) -> Any:
    """The vision encoder a --heatmap needs: the index's (a fields index: its image field's)."""
    from latemm.encoders import load_encoder
    from latemm.runs.show import page_lookup

    _, _, recorded = page_lookup(args.index)
    encoder = None
    if recorded:
        devices = args.device.split(",") if args.device else None
        encoder = load_encoder(recorded, devices=devices, dtype=_model_dtype(args))
    if not hasattr(encoder, "similarity_maps"):
        built_with = (
            encoder.info.name_or_path
            if encoder is not None
            else "no image encoder (precomputed vectors, or text fields only)"
        )
        raise InputError(
            f"--heatmap needs an index built with a vision encoder (ColPali, ColQwen2); "
            f"{args.index} was built with {built_with}"
        )
    return encoder


def cmd_quickstart(args: argparse.Namespace) -> int:
    from latemm.quickstart import run

    run(args.work, k=args.k)
    return 0


def _add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default=None,
        help="torch device (default: CUDA if available), or several: cuda:0,cuda:1",
    )
    parser.add_argument(
        "--model-dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="model weights' dtype (default: %(default)s, i.e. bfloat16 on a GPU, float32 on the CPU)",
    )


def _add_on_empty_flag(parser: argparse.ArgumentParser) -> None:
    from latemm.index.pipeline import ON_EMPTY

    parser.add_argument(
        "--on-empty",
        default="skip",
        choices=ON_EMPTY,
        help="rows with nothing the encoder can read (blank pages, empty text): skip them and "
        "report them (default), or stop with an error",
    )


def _add_ray_flags(parser: argparse.ArgumentParser, *, shards: str, workers: bool) -> None:
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster: 'local' (the default) starts one here, an address "
        "(ray://host:10001, auto) joins a running one; needs pip install 'latemm[ray]'"
        + (
            ". search serves a sharded index or a sharded fields collection from Ray actors "
            "(one per shard; a bm25 field stays in this process)"
            if not shards
            else ""
        ),
    )
    if shards:
        parser.add_argument("--shards", type=int, default=None, metavar="N", help=shards)
    if workers:
        parser.add_argument(
            "--workers",
            type=int,
            default=None,
            help="with --ray: encoder replicas (default: one per GPU, else one per CPU)",
        )


def _add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        dest="json_summary",
        action="store_true",
        help="print the closing summary as one JSON object on stdout (for scripts; with --quiet "
        "nothing else is printed)",
    )


def _index_parser(sub: Any) -> None:
    """The parser of ``latemm index``."""
    from index_store.codecs import DTYPES
    from index_store.config import DEFAULT_REFINE_DEPTH, REFINE_DTYPES
    from latemm.index.pipeline import ON_EXISTING

    p = sub.add_parser("index", help="add a Parquet corpus to an index (creates it if needed)")
    p.add_argument("corpus", help="corpus Parquet file or directory")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument(
        "--encoder",
        default=None,
        help="hub id or local folder; not needed with an embedding column",
    )
    p.add_argument(
        "--field",
        action="append",
        default=None,
        metavar="NAME=ENCODER",
        help="a named field (repeatable): ENCODER is a hub id, a local folder, bm25, "
        "embedding:COLUMN (precomputed), or single:ENCODER for one vector per page",
    )
    p.add_argument(
        "--field-kind",
        action="append",
        default=None,
        metavar="NAME=single",
        help="make field NAME single-vector (same as single:ENCODER)",
    )
    _add_device_flags(p)
    _add_encoder_flags(p)
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", *DTYPES),
        help="storage of the token vectors (default: auto, res4 for token vectors and float16 "
        "for single vectors: experiments/RESULTS.md section 5d): float16, float32, int8, binary (1-bit "
        "signs), pq1 / pq2 (product quantisation, 1 / 2 bits per dimension, codebook trained "
        "per segment; lossy, see experiments/RESULTS.md section 5), res1 / res2 / res4 "
        "(k-means centroid + 1 / 2 / 4-bit residual per dimension, one codebook per index; "
        "experiments/residual_codec.py)",
    )
    p.add_argument(
        "--refine",
        default=None,
        choices=REFINE_DTYPES,
        help="with compact codes (--dtype pq1, pq2 or binary): also keep the vectors in this "
        "dtype on disk, read only to rescore each query's best --refine-depth candidates "
        "exactly (the codes alone lose ranking precision: experiments/RESULTS.md section 5c)",
    )
    p.add_argument(
        "--refine-depth",
        type=int,
        default=DEFAULT_REFINE_DEPTH,
        help=f"candidates per query rescored from the --refine copy (default "
        f"{DEFAULT_REFINE_DEPTH}; at least k)",
    )
    p.add_argument(
        "--faiss",
        default="auto",
        help="first stage over the FDEs: auto (default: one 4-bit PQ codebook per index, 640 "
        "bytes per page, one fast-scan search over all segments, i.e. PQ<D/8>x4fs), or a faiss "
        "factory string built per segment (Flat, HNSW32, IVF256,PQ64)",
    )
    p.add_argument(
        "--commit-every", type=int, default=512, help="documents per commit (default: %(default)s)"
    )
    p.add_argument(
        "--on-existing",
        default="skip",
        choices=ON_EXISTING,
        help="a doc_id already in the index: skip it (resume), upsert (replace) or error "
        "(default: %(default)s)",
    )
    _add_on_empty_flag(p)
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="pages encoded per batch (default: %(default)s)",
    )
    p.add_argument(
        "--pool-factor",
        type=int,
        default=1,
        help="token pooling: keep ~T/F vectors per page (default: %(default)s, no pooling)",
    )
    p.add_argument(
        "--keep-images",
        action="store_true",
        help="store page images even when the encoder reads only text (default: only an image "
        "encoder's index stores them; show and a text index's reranker then use the page text)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes on stderr")
    _add_json_flag(p)
    _add_ray_flags(
        p,
        shards="build a sharded index of N shards (doc ids routed by hash; fixed once built)",
        workers=True,
    )
    _add_column_flags(p)
    p.set_defaults(func=cmd_index)


def _encode_parser(sub: Any) -> None:
    """The parser of ``latemm encode``."""
    p = sub.add_parser(
        "encode", help="encode a corpus into a Parquet file with an embedding column"
    )
    p.add_argument("corpus", help="corpus Parquet file or directory")
    p.add_argument("--encoder", required=True, help="hub id, local folder or minilm")
    p.add_argument("--out", required=True, help="output Parquet file with an embedding column")
    _add_device_flags(p)
    _add_encoder_flags(p)
    p.add_argument(
        "--batch-size", type=int, default=64, help="pages encoded per batch (default: %(default)s)"
    )
    p.add_argument(
        "--pool-factor",
        type=int,
        default=1,
        help="token pooling: keep ~T/F vectors per page (default: %(default)s, no pooling)",
    )
    _add_on_empty_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes on stderr")
    _add_ray_flags(
        p,
        shards="with --ray: write OUT as a folder with one Parquet partition per index shard",
        workers=True,
    )
    _add_column_flags(p)
    p.set_defaults(func=cmd_encode)


# Over 60 lines on purpose: argparse declarations of the search command's flags.
def _search_parser(sub: Any) -> None:
    """The parser of ``latemm search``."""
    p = sub.add_parser("search", help="search a Parquet file of queries into a run file")
    p.add_argument("index", help="index directory")
    p.add_argument(
        "queries", help="queries Parquet file (query_id and text; see latemm convert for CSV/JSON)"
    )
    p.add_argument(
        "--out",
        required=True,
        help="run Parquet file: query_id, doc_id, rank, score and each stage's score",
    )
    p.add_argument(
        "--trec",
        default=None,
        help="also write a TREC run file (needs ids without whitespace; the Parquet run has no "
        "such limit)",
    )
    p.add_argument("--k", type=int, default=10, help="pages per query (default: %(default)s)")
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="first-stage candidates rescored exactly (default: chosen from k)",
    )
    p.add_argument(
        "--refine-depth",
        type=int,
        default=None,
        help="an index with a refine copy (latemm index --refine): candidates per query "
        "rescored from the copy (default: the depth the index recorded); residual codes "
        "(--dtype res1/res2/res4): candidates per query decoded, the best by their tokens' "
        "centroids, as PLAID prunes (default: the depth the index recorded, 128 for residual "
        "codes written by this version, every candidate before; 128 keeps Vaswani's recall@10 "
        "and is faster than float16, experiments/RESULTS.md section 5d)",
    )
    p.add_argument(
        "--first-stage",
        choices=("fde", "centroids"),
        default=None,
        help="how candidates are found (default: the index's: centroids for residual codes "
        "written by this version, fde otherwise): the FDE with faiss (fde, every index), or "
        "for residual codes (--dtype res2/res4) PLAID's candidate generation (centroids: "
        "pages holding the query tokens' nearest centroids, ranked by their tokens' centroids; "
        "better on long pages, experiments/RESULTS.md section 5d)",
    )
    p.add_argument(
        "--where",
        default=None,
        help='one SQL condition over metadata columns, e.g. "year >= 2020" (scalar functions '
        "only: no subqueries, table functions or ';'; run without file access); ANDed with "
        "each query's own condition in the queries file's 'where' column, if it has one",
    )
    p.add_argument("--encoder", default=None, help="override the index's recorded encoder")
    p.add_argument("--fields", default=None, help="named fields to search, a,b (default: all)")
    p.add_argument(
        "--query-column",
        action="append",
        default=None,
        metavar="FIELD=COLUMN",
        help="the query file's column of vectors for a field of precomputed vectors (repeat per "
        "field; default: 'embedding' serves the one such field)",
    )
    p.add_argument(
        "--fusion",
        default=None,
        choices=["auto", "rrf", "weighted"],
        help="how fields fuse (default auto: RRF with k 10, each field weighted per query by "
        "how far its top 10 agrees with the other fields')",
    )
    p.add_argument("--weights", default=None, help="field weights, e.g. text=0.7,bm25=0.3")
    p.add_argument(
        "--normalization",
        default=None,
        choices=["minmax", "zscore"],
        help="how --fusion weighted puts each field's scores on one scale, per query over the "
        "candidates (default minmax)",
    )
    p.add_argument(
        "--rrf-k",
        type=int,
        default=None,
        help="the k of --fusion rrf or auto, 1/(k + rank) (default 60; auto: 10)",
    )
    p.add_argument(
        "--rescore-field",
        action="append",
        default=None,
        help="field rescored with exact MaxSim (repeatable; default: every multi-vector field)",
    )
    p.add_argument(
        "--preset",
        default=None,
        choices=["text-only", "image-only", "fusion", "joint"],
        help="UniDoc-Bench's paradigms: which fields to search (see the README)",
    )
    p.add_argument("--rerank", default=None, help="MLLM reranker: hub id or local folder")
    p.add_argument(
        "--rerank-depth",
        type=int,
        default=20,
        help="pages per query the reranker reads (default: %(default)s)",
    )
    p.add_argument(
        "--rerank-template",
        default="monoqwen",
        choices=["monoqwen", "qwen3-vl-reranker", "yesno"],
        help="the reranker's prompt (default: %(default)s)",
    )
    p.add_argument("--rerank-adapter", default=None, help="LoRA adapter (peft), e.g. MonoQwen2-VL")
    p.add_argument(
        "--rerank-fusion",
        default="none",
        choices=["none", "rrf"],
        help="none: the reranker's order; rrf: reciprocal rank fusion with MaxSim (default: %(default)s)",
    )
    p.add_argument("--rerank-cache", default=None, help="SQLite file caching rerank scores")
    p.add_argument(
        "--allow-files",
        action="append",
        default=[],
        metavar="DIR",
        help="the reranker reads page images that the index names by path (image.path) only "
        "under DIR (repeatable); other paths are an error",
    )
    _add_device_flags(p)
    _add_encoder_flags(p)
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="queries encoded per batch (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes on stderr")
    _add_json_flag(p)
    _add_ray_flags(p, shards="", workers=False)
    _add_column_flags(p)
    p.set_defaults(func=cmd_search)


def _maintenance_parsers(sub: Any) -> None:
    """The parser of ``info``, ``delete``, ``compact``, ``verify`` and ``eval``."""
    p = sub.add_parser("info", help="index statistics as JSON")
    p.add_argument("index", help="index directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "tune", help="fit a multi-field index's fusion to labelled queries (k-fold CV)"
    )
    p.add_argument("index", help="multi-field index directory")
    p.add_argument("--queries", required=True, help="queries Parquet file (query_id, text)")
    p.add_argument("--qrels", required=True, help="judgements: TREC qrels, JSON or Parquet")
    p.add_argument(
        "--folds", type=int, default=5, help="cross-validation folds (default: %(default)s)"
    )
    p.add_argument("--metric", default="ndcg@10", help="the metric to fit (default: %(default)s)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the folds' shuffle (default: %(default)s)"
    )
    p.add_argument(
        "--fields", default=None, help="comma-separated fields to fuse (default: every field)"
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="first-phase depth, as latemm search --candidates (default: 512)",
    )
    p.add_argument(
        "--save",
        action="store_true",
        help="record the setting chosen on all queries as the index's search default "
        "(default: report only)",
    )
    p.add_argument("--device", default=None, help="torch device for the encoders (default: auto)")
    _add_json_flag(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("delete", help="delete documents by id")
    p.add_argument("index", help="index directory")
    p.add_argument("--ids", nargs="*", help="doc_ids to delete")
    p.add_argument("--ids-file", default=None, help="file with one doc_id per line")
    p.add_argument(
        "--missing-ok", action="store_true", help="ids not in the index are not an error"
    )
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("compact", help="rewrite the index without deleted documents")
    p.add_argument("index", help="index directory")
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("verify", help="check every file's checksum")
    p.add_argument("index", help="index directory")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("eval", help="evaluate run files against qrels (ranx)")
    p.add_argument(
        "runs", nargs="+", help="run files (Parquet or TREC), then the qrels unless --qrels"
    )
    p.add_argument("--qrels", default=None, help="qrels (TREC, JSON or Parquet)")
    p.add_argument(
        "--format",
        default="text",
        choices=["text", "markdown", "latex", "json"],
        help="several runs: a table with significance markers, a legend and the p-values "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--test",
        default="student",
        choices=["student", "fisher"],
        help="paired test (default: %(default)s)",
    )
    p.add_argument(
        "--correction",
        default="holm",
        choices=["holm", "bonferroni", "bh", "none"],
        help="multiple-comparison correction over every pair of runs, per metric "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--alpha", type=float, default=0.05, help="significance level (default: %(default)s)"
    )
    p.add_argument(
        "--permutations", type=int, default=1000, help="Fisher's test (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=42, help="Fisher's test (default: %(default)s)")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=["ndcg@5", "ndcg@10", "recall@10", "recall@100", "mrr@10"],
        help="ranx metrics, each with an optional @cutoff (default: ndcg@5 ndcg@10 recall@10 "
        "recall@100 mrr@10)",
    )
    p.add_argument("--json", default=None, help="write the scores as JSON (default: none)")
    p.add_argument("--quiet", action="store_true", help="no note on stderr while ranx loads")
    p.set_defaults(func=cmd_eval)


def _data_parsers(sub: Any) -> None:
    """The parser of ``ingest``, ``convert``, ``show`` and ``quickstart``."""
    p = sub.add_parser(
        "ingest", help="render and extract PDF and image pages into a corpus Parquet file"
    )
    p.add_argument("inputs", nargs="+", help="PDF, PNG, JPEG or TIFF files, or folders of them")
    p.add_argument(
        "--out",
        required=True,
        help="corpus Parquet file: doc_id (FILE#pN), image, text, text_source, source, page",
    )
    p.add_argument(
        "--dpi",
        type=float,
        default=96.0,
        help="resolution pages are rendered at (default: %(default)s)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=1024 * 1024,
        help="largest page image in pixels; bigger renders are scaled down (default: %(default)s)",
    )
    p.add_argument("--no-images", action="store_true", help="text only (for text encoders)")
    p.add_argument(
        "--ocr",
        choices=["auto", "always", "never"],
        default="auto",
        help="auto: OCR pages without a text layer when an engine is installed; "
        "always: OCR every page (layer text kept in layer_text); never: text layer only "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--ocr-engine",
        choices=["rapidocr", "tesseract"],
        default=None,
        help="OCR engine (default: the first installed, rapidocr then tesseract)",
    )
    p.add_argument(
        "--ocr-workers", type=int, default=None, help="OCR processes (default: one per core)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "convert",
        help="ViDoRe v1/v2 or BEIR data to corpus/queries Parquet and TREC qrels; or a CSV, "
        "JSON, JSONL or text file of questions to a queries Parquet file",
    )
    p.add_argument(
        "source",
        help="a Parquet file or folder (ViDoRe), a BEIR folder, or questions (.csv, .tsv, "
        ".json, .jsonl, .txt: columns query_id/id and text/question, or one question a line)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="folder for corpus.parquet, queries.parquet, qrels.txt (questions: the .parquet file)",
    )
    p.add_argument(
        "--format",
        default=None,
        choices=["vidore-v1", "vidore-v2", "vidore-v3", "beir"],
        help="default: detect",
    )
    p.add_argument("--split", default="test", help="BEIR qrels split (default: %(default)s)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("show", help="render a query's top pages as HTML (thumbnails and scores)")
    p.add_argument("run", help="run Parquet file")
    p.add_argument("--index", required=True, help="the index the run was searched in")
    p.add_argument("--query", required=True, help="query_id")
    p.add_argument("--k", type=int, default=10, help="pages shown (default: %(default)s)")
    p.add_argument("--out", default=None, help="HTML file (default RUN-QUERY.html)")
    p.add_argument("--queries", default=None, help="queries Parquet, for the query's text")
    p.add_argument(
        "--qrels",
        default=None,
        help="qrels (TREC, JSON or Parquet, as for eval): mark the relevant pages (default: none)",
    )
    p.add_argument(
        "--heatmap",
        action="store_true",
        help="patch-level similarity heat maps with the index's vision encoder (needs --queries)",
    )
    p.add_argument(
        "--allow-files",
        action="append",
        default=[],
        metavar="DIR",
        help="read page images that the index names by path (image.path) only under DIR "
        "(repeatable); other paths get a placeholder",
    )
    _add_device_flags(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "quickstart", help="offline demo: real PDFs, MiniLM, ranked pages and timings"
    )
    p.add_argument(
        "--work",
        default="latemm-quickstart",
        help="folder for the corpus, index and run (default: %(default)s)",
    )
    p.add_argument(
        "--k", type=int, default=3, help="pages printed per question (default: %(default)s)"
    )
    p.set_defaults(func=cmd_quickstart)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latemm", description="Late-interaction retrieval over visual documents."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _index_parser(sub)
    _encode_parser(sub)
    _search_parser(sub)
    _maintenance_parsers(sub)
    _data_parsers(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--verbose",
            action="store_true",
            help="show the libraries' own output too (transformers' 'Loading weights' bars and "
            "warnings; default: off)",
        )
    return parser


def _quiet_libraries() -> None:
    """transformers and huggingface_hub without their progress bars and advisory warnings
    (read when they are first imported, so set before any command runs)."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        _quiet_libraries()
    try:
        return int(args.func(args))
    except LatemmError as exc:
        print(f"latemm {args.command}: error: {exc}", file=sys.stderr)
        _release_frames(exc)
        return 2


def _release_frames(exc: BaseException | None) -> None:
    """Clear the frames of a handled error and of the errors it chains. A ``raise … from err``
    inside ``except`` leaves a cycle (frame -> err -> traceback -> frame) that only the garbage
    collector breaks; until it runs, the failed build's open segments (memory maps of files it
    may have deleted) stay held, and the space they take is not given back to a full disk."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if exc.__traceback__ is not None:
            traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


if __name__ == "__main__":
    sys.exit(main())
