"""The ``latemm`` command line: ingest, convert, encode, index, search, eval, show, info, delete,
compact, verify, quickstart."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from index_store.errors import InputError, LatemmError


def _columns(args: argparse.Namespace, id_default: str) -> Any:
    from latemm.io import Columns

    return Columns(
        id=args.id_column or id_default,
        image=args.image_column,
        text=args.text_column,
        embedding=args.embedding_column,
    )


def _add_column_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id-column", default=None, help="id column (default doc_id / query_id)")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--embedding-column", default="embedding")


def _encoder(args: argparse.Namespace, name: str | None, index_dir: str | None = None) -> Any:
    """The encoder named by --encoder (with --encoder-kind, --instruction, --dim, --pooling),
    else the one the index recorded, rebuilt with its recorded options (None if neither), on
    --device (several comma-separated devices encode in parallel) with --model-dtype."""
    from latemm.encoders import load_encoder

    devices = args.device.split(",") if args.device else None
    options = {
        key: getattr(args, key, None)
        for key in ("instruction", "dim", "pooling")
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
        from latemm.sharded import is_sharded, read_manifest

        recorded = None
        if is_sharded(index_dir):
            recorded = read_manifest(index_dir).config.encoder
        elif (Path(index_dir) / "manifest.json").is_file():
            from index_store import Index

            recorded = Index.open(index_dir, verify="none").config.encoder
        if recorded:
            return load_encoder(recorded, devices=devices, dtype=_model_dtype(args))
    if name is None:
        return None
    if not Path(name).exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise InputError(
            f"--encoder {name}: no such folder, and not a hub id (owner/name); give the folder "
            "of a saved model or a hub id"
        )
    return load_encoder(name, kind=kind, devices=devices, dtype=_model_dtype(args), **options)


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


def _model_dtype(args: argparse.Namespace) -> Any:
    """--model-dtype as a torch dtype; None lets the model choose (bf16 on GPU, float32 on CPU)."""
    if args.model_dtype == "auto":
        return None
    import torch

    return getattr(torch, args.model_dtype)


def cmd_index(args: argparse.Namespace) -> int:
    from latemm.pipeline import index_corpus
    from latemm.sharded import index_sharded, is_sharded

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
    )
    if args.field:
        return _index_fields(args, start, options)
    if args.ray is not None:
        from latemm.distributed import index_ray

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
    elif args.shards is not None or is_sharded(args.index):
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
    print(
        f"added {report.added} documents, skipped {report.skipped} already indexed or rejected, "
        f"rejected {report.rejected}; {report.documents} in {args.index} "
        f"(generation {report.generation}) in {time.perf_counter() - start:.1f}s"
    )
    return 0


def _encoder_name(args: argparse.Namespace, index_dir: str | None) -> str | None:
    """--encoder, else the encoder the (sharded) index recorded, as a name: Ray workers load it."""
    if args.encoder is not None:
        return str(args.encoder)
    if index_dir is None:
        return None
    from latemm.sharded import is_sharded, read_manifest

    if is_sharded(index_dir):
        recorded = read_manifest(index_dir).config.encoder
        return str(recorded["name_or_path"]) if recorded else None
    return None


def _index_fields(args: argparse.Namespace, start: float, options: dict[str, Any]) -> int:
    """``latemm index --field NAME=ENCODER ...``: a multi-field index (latemm.fields)."""
    from latemm.fields import index_fields, parse_field

    if args.encoder:
        raise InputError(
            "give --encoder (one field) or --field NAME=ENCODER (named fields), not both"
        )
    kinds = dict(_pairs(args.field_kind or [], "--field-kind"))
    counts = index_fields(
        args.corpus,
        args.index,
        [parse_field(text, kinds) for text in args.field],
        device=args.device.split(",")[0] if args.device else None,
        **options,
    )
    fields = ", ".join(f"{name}: {n} documents" for name, n in counts.items())
    print(f"indexed {args.index} ({fields}) in {time.perf_counter() - start:.1f}s")
    return 0


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InputError(f"{flag} {item!r}: expected NAME=VALUE")
        out.append((name.strip(), value.strip()))
    return out


def cmd_encode(args: argparse.Namespace) -> int:
    from latemm.pipeline import encode_corpus

    start = time.perf_counter()
    if args.ray is not None:
        from latemm.distributed import encode_ray

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
    from latemm.fields import is_fields_index
    from latemm.pipeline import search_file

    if args.allow_files and not args.rerank:
        raise InputError(
            "--allow-files names where the reranker may read page images; it applies only "
            "with --rerank MODEL (add it, or leave --allow-files out)"
        )
    start = time.perf_counter()
    named = (
        args.fields
        or args.weights
        or args.rescore_field
        or args.preset
        or args.fusion
        or args.normalization
        or args.rrf_k
    )
    if named or is_fields_index(args.index):
        return _search_fields(args, start)
    encoder = _encoder(args, args.encoder, args.index)
    reranker = None
    if args.rerank:
        from latemm.reranker import MLLMReranker

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
    )
    queries = len(set(run.column("query_id").to_pylist()))
    elapsed = time.perf_counter() - start
    print(
        f"searched {queries} queries in {elapsed:.1f}s ({queries / max(elapsed, 1e-9):.1f} queries/s); wrote {args.out}"
    )
    return 0


def _search_fields(args: argparse.Namespace, start: float) -> int:
    """``latemm search`` over named fields (latemm.field_search)."""
    from latemm.field_search import search_fields_file
    from latemm.fusion import parse_weights

    if args.encoder:
        raise InputError(
            "--encoder names one model; with named fields each field's recorded encoder is used"
        )
    if args.refine_depth is not None:
        raise InputError(
            "--refine-depth applies to an ordinary index; fused fields score every candidate "
            "from a field's refine copy"
        )
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
        fusion=args.fusion or "rrf",
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
    )
    queries = len(set(run.column("query_id").to_pylist()))
    elapsed = time.perf_counter() - start
    print(f"searched {queries} queries in {elapsed:.1f}s over fields; wrote {args.out}")
    return 0


def _reranker(args: argparse.Namespace) -> Any:
    if not args.rerank:
        return None
    from latemm.reranker import MLLMReranker

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
    from index_store import Index
    from latemm.fields import is_fields_index, open_field, read_fields

    if is_fields_index(args.index):
        from latemm.field_maintenance import recover

        recover(args.index)
        fields = []
        for spec in read_fields(args.index).fields:
            opened = open_field(args.index, spec)
            stats = (
                opened.stats() if isinstance(opened, Index) else {"documents": len(opened.doc_ids)}
            )
            fields.append({**spec.to_dict(), "stats": stats})
        print(json.dumps({"path": str(args.index), "fields": fields}, indent=2))
        return 0
    from latemm.sharded import is_sharded, sharded_stats

    if is_sharded(args.index):
        print(json.dumps(sharded_stats(args.index), indent=2))
        return 0
    index = Index.open(args.index)
    stats = index.stats()
    if stats.get("rejected"):  # the rows an ingest skipped: row, doc_id, source file, reason
        stats["rejects"] = index.rejects().to_pylist()
    print(json.dumps(stats, indent=2))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from index_store import Index, create
    from latemm.fields import is_fields_index

    ids = list(args.ids or [])
    if args.ids_file:
        if not Path(args.ids_file).is_file():
            raise InputError(f"--ids-file {args.ids_file} does not exist")
        ids += [
            line.strip() for line in Path(args.ids_file).read_text().splitlines() if line.strip()
        ]
    if is_fields_index(args.index):  # every field at once (latemm.field_maintenance)
        from latemm.field_maintenance import delete

        found = delete(args.index, ids, missing_ok=args.missing_ok)
        print(f"deleted {found} documents from every field of {args.index}")
        return 0
    with create(args.index, Index.open(args.index, verify="none").config) as writer:
        found = writer.delete(ids, missing_ok=args.missing_ok)
        writer.commit()
    print(f"deleted {found} documents from {args.index}")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from index_store import Index, create
    from latemm.fields import is_fields_index

    if is_fields_index(args.index):
        from latemm.field_maintenance import compact

        state = compact(args.index)
        fields = ", ".join(f"{name}: {value}" for name, value in state.items())
        print(f"compacted {args.index} (fields {fields})")
        return 0
    with create(args.index, Index.open(args.index, verify="none").config) as writer:
        generation = writer.compact()
    print(f"compacted {args.index} (generation {generation})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from index_store import verify
    from latemm.fields import is_fields_index, verify_fields
    from latemm.sharded import is_sharded, verify_sharded

    if is_fields_index(args.index):
        problems = verify_fields(args.index)
    elif is_sharded(args.index):
        problems = verify_sharded(args.index)
    else:
        problems = verify(args.index)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{args.index}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.index}: all files match their checksums")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from latemm.metrics import check_metrics, compare, evaluate, load_qrels, load_run

    check_metrics(args.metrics)
    qrels = load_qrels(args.qrels)
    runs = {name: load_run(r) for name, r in zip(_run_names(args.runs), args.runs, strict=True)}
    results = {name: evaluate(run, qrels, args.metrics) for name, run in runs.items()}
    if len(runs) > 1:
        print(compare(runs, qrels, args.metrics))
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
    from latemm.ingest import ingest_pdfs

    start = time.perf_counter()
    report = ingest_pdfs(
        args.inputs,
        args.out,
        dpi=args.dpi,
        max_pixels=args.max_pixels,
        images=not args.no_images,
        progress=not args.quiet,
    )
    print(
        f"ingested {report.pages} pages from {report.files} PDFs into {args.out} in "
        f"{time.perf_counter() - start:.1f}s; {len(report.problems)} problem(s) reported"
    )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from latemm.loaders import convert

    done = convert(args.source, args.out, format=args.format, split=args.split)
    print(
        f"wrote {done.documents} documents to {done.corpus}, {done.num_queries} queries to "
        f"{done.queries} and {done.judgements} judgements to {done.qrels}"
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from latemm.show import render

    query_text = None
    if args.queries:
        from latemm.io import Columns, read_batches

        for batch in read_batches(args.queries, columns=Columns(id="query_id"), kind="queries"):
            if args.query in batch.ids and "text" in batch.table.column_names:
                query_text = batch.table.column("text")[batch.ids.index(args.query)].as_py()
                break
    encoder = _encoder(args, None, args.index) if args.heatmap else None
    if args.heatmap and not hasattr(encoder, "similarity_maps"):
        built_with = encoder.info.name_or_path if encoder is not None else "precomputed vectors"
        raise InputError(
            f"--heatmap needs an index built with a vision encoder (ColPali, ColQwen2); "
            f"{args.index} was built with {built_with}"
        )
    html = render(
        args.run,
        args.index,
        args.query,
        k=args.k,
        query_text=query_text,
        encoder=encoder,
        allow_files=args.allow_files,
    )
    # The query id names the default file: anything but letters, digits, '.', '-' and '_'
    # (a '/' would name a folder) becomes '_'.
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", args.query).lstrip(".") or "query"
    out = Path(args.out or f"{Path(args.run).stem}-{safe[:100]}.html")
    out.write_text(html, encoding="utf-8")
    print(f"wrote {out}")
    return 0


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
        help="model weights' dtype (auto: bfloat16 on a GPU, float32 on the CPU)",
    )


def _add_on_empty_flag(parser: argparse.ArgumentParser) -> None:
    from latemm.pipeline import ON_EMPTY

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
        "(ray://host:10001, auto) joins a running one; needs pip install 'latemm[ray]'",
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


def _index_parser(sub: Any) -> None:
    """The parser of ``latemm index``."""
    from index_store.codecs import DTYPES
    from index_store.config import DEFAULT_REFINE_DEPTH, REFINE_DTYPES
    from latemm.pipeline import ON_EXISTING

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
        default="float16",
        choices=DTYPES,
        help="storage of the token vectors: float16 (default), float32, int8, binary (1-bit "
        "signs), pq1 / pq2 (product quantisation, 1 / 2 bits per dimension, codebook trained "
        "per segment; lossy, see experiments/RESULTS.md section 5), res1 / res2 / res4 "
        "(k-means centroid + 1 / 2 / 4-bit residual per dimension, trained per segment; "
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
    p.add_argument("--commit-every", type=int, default=512, help="documents per commit")
    p.add_argument("--on-existing", default="skip", choices=ON_EXISTING)
    _add_on_empty_flag(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--pool-factor", type=int, default=1, help="token pooling: keep ~T/F vectors per page"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
    p.add_argument("corpus")
    p.add_argument("--encoder", required=True, help="hub id or local folder")
    p.add_argument("--out", required=True)
    _add_device_flags(p)
    _add_encoder_flags(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--pool-factor", type=int, default=1)
    _add_on_empty_flag(p)
    p.add_argument("--quiet", action="store_true")
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
    p.add_argument("index")
    p.add_argument("queries")
    p.add_argument("--out", required=True, help="run Parquet file")
    p.add_argument(
        "--trec",
        default=None,
        help="also write a TREC run file (needs ids without whitespace; the Parquet run has no "
        "such limit)",
    )
    p.add_argument("--k", type=int, default=10)
    p.add_argument(
        "--candidates", type=int, default=None, help="first-stage candidates rescored exactly"
    )
    p.add_argument(
        "--refine-depth",
        type=int,
        default=None,
        help="an index with a refine copy (latemm index --refine): candidates per query "
        "rescored from the copy (default: the depth the index recorded)",
    )
    p.add_argument(
        "--where",
        default=None,
        help='one SQL condition over metadata columns, e.g. "year >= 2020" (scalar functions '
        "only: no subqueries, table functions or ';'; run without file access)",
    )
    p.add_argument("--encoder", default=None, help="override the index's recorded encoder")
    p.add_argument("--fields", default=None, help="named fields to search, a,b (default: all)")
    p.add_argument(
        "--fusion",
        default=None,
        choices=["rrf", "weighted"],
        help="how fields fuse (default rrf)",
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
        "--rrf-k", type=int, default=None, help="the k of --fusion rrf, 1/(k + rank) (default 60)"
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
        "--rerank-depth", type=int, default=20, help="pages per query the reranker reads"
    )
    p.add_argument(
        "--rerank-template", default="monoqwen", choices=["monoqwen", "qwen3-vl-reranker", "yesno"]
    )
    p.add_argument("--rerank-adapter", default=None, help="LoRA adapter (peft), e.g. MonoQwen2-VL")
    p.add_argument(
        "--rerank-fusion",
        default="none",
        choices=["none", "rrf"],
        help="rrf: reciprocal rank fusion with MaxSim",
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
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true")
    _add_ray_flags(p, shards="", workers=False)
    _add_column_flags(p)
    p.set_defaults(func=cmd_search)


def _maintenance_parsers(sub: Any) -> None:
    """The parser of ``info``, ``delete``, ``compact``, ``verify`` and ``eval``."""
    p = sub.add_parser("info", help="index statistics as JSON")
    p.add_argument("index")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("delete", help="delete documents by id")
    p.add_argument("index")
    p.add_argument("--ids", nargs="*")
    p.add_argument("--ids-file", default=None, help="file with one doc_id per line")
    p.add_argument("--missing-ok", action="store_true")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("compact", help="rewrite the index without deleted documents")
    p.add_argument("index")
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("verify", help="check every file's checksum")
    p.add_argument("index")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("eval", help="evaluate run files against qrels (ranx)")
    p.add_argument("runs", nargs="+", help="run files (Parquet or TREC); several are compared")
    p.add_argument("qrels", help="qrels (TREC, JSON or Parquet)")
    p.add_argument(
        "--metrics", nargs="+", default=["ndcg@5", "ndcg@10", "recall@10", "recall@100", "mrr@10"]
    )
    p.add_argument("--json", default=None, help="write the scores as JSON")
    p.set_defaults(func=cmd_eval)


def _data_parsers(sub: Any) -> None:
    """The parser of ``ingest``, ``convert``, ``show`` and ``quickstart``."""
    p = sub.add_parser("ingest", help="render and extract PDF pages into a corpus Parquet file")
    p.add_argument("inputs", nargs="+", help="PDF files or folders")
    p.add_argument("--out", required=True)
    p.add_argument("--dpi", type=float, default=96.0)
    p.add_argument("--max-pixels", type=int, default=1024 * 1024)
    p.add_argument("--no-images", action="store_true", help="text only (for text encoders)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "convert", help="ViDoRe v1/v2 or BEIR data to corpus/queries Parquet and TREC qrels"
    )
    p.add_argument("source", help="a Parquet file or folder (ViDoRe) or a BEIR folder")
    p.add_argument(
        "--out", required=True, help="folder for corpus.parquet, queries.parquet, qrels.txt"
    )
    p.add_argument(
        "--format", default=None, choices=["vidore-v1", "vidore-v2", "beir"], help="default: detect"
    )
    p.add_argument("--split", default="test", help="BEIR qrels split")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("show", help="render a query's top pages as HTML (thumbnails and scores)")
    p.add_argument("run", help="run Parquet file")
    p.add_argument("--index", required=True)
    p.add_argument("--query", required=True, help="query_id")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", default=None, help="HTML file (default RUN-QUERY.html)")
    p.add_argument("--queries", default=None, help="queries Parquet, for the query's text")
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
        "--work", default="latemm-quickstart", help="folder for the corpus, index and run"
    )
    p.add_argument("--k", type=int, default=3)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LatemmError as exc:
        print(f"latemm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
