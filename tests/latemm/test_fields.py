"""Named fields in one index: fused rankings against brute force written out here (MaxSim by a
loop, inner products, bm25s over every page, RRF and weighted fusion by hand), the layout on
disk, adding a field later, old single-field indexes, and bad input naming the field."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store import Index, IndexConfig, InputError, create
from latemm.index.fields import FORMAT_VERSION, index_fields, parse_field, read_fields
from latemm.retrieval.field_search import FieldRetriever
from latemm.retrieval.retriever import Retriever
from tests.helpers import SMALL_DIM as DIM

N = 36
WORDS = "revenue margin profit asset equity cash debt growth risk risks audit audits".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Pages with a multi-vector and a one-vector embedding column; every 7th has no text."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 5)) if i % 7 else None for i in range(N)]
    multi = [rng.standard_normal((int(t), DIM)).astype(np.float32) for t in rng.integers(1, 7, N)]
    single = [rng.standard_normal((1, DIM)).astype(np.float32) for _ in range(N)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.parquet"
    table = pa.table(
        {
            "doc_id": [f"p{i:02d}" for i in range(N)],
            "text": texts,
            "emb_multi": [m.tolist() for m in multi],
            "emb_single": [s.tolist() for s in single],
            "year": [2000 + i for i in range(N)],
        }
    )
    pq.write_table(table, path)
    ids = [f"p{i:02d}" for i in range(N)]
    return path, ids, texts, dict(zip(ids, multi, strict=True)), dict(zip(ids, single, strict=True))


@pytest.fixture(scope="module")
def index(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("idx") / "idx"
    fields = {"m": "embedding:emb_multi", "s": "single:embedding:emb_single", "b": "bm25"}
    index_fields(corpus[0], path, fields, dtype="float32", progress=False)
    return path


def _maxsim_loop(query: np.ndarray, doc: np.ndarray) -> float:
    return float(sum(max(float(np.dot(t, u)) for u in doc) for t in query))


def _bm25_scores(ids, texts, query: str) -> dict[str, float]:
    """bm25s over the pages with text, English stop words and Snowball's English stemmer (the
    bm25 field's default tokenizer)."""
    import bm25s
    import Stemmer

    stem = Stemmer.Stemmer("english")
    kept = [(d, t) for d, t in zip(ids, texts, strict=True) if t and t.strip()]
    model = bm25s.BM25()
    model.index(
        bm25s.tokenize([t for _, t in kept], stopwords="en", stemmer=stem, show_progress=False),
        show_progress=False,
    )
    tokens = bm25s.tokenize(
        [query], stopwords="en", stemmer=stem, return_ids=False, show_progress=False
    )[0]
    scores = model.get_scores(tokens)
    return {d: float(s) for (d, _), s in zip(kept, scores, strict=True)}


def _ranked(scores: dict[str, float]) -> list[str]:
    return sorted(scores, key=lambda d: (-scores[d], d))


def _rrf(per_field: list[dict[str, float]], weights: list[float]) -> dict[str, float]:
    fused: dict[str, float] = {}
    for scores, weight in zip(per_field, weights, strict=True):
        for rank, d in enumerate(_ranked(scores), start=1):
            fused[d] = fused.get(d, 0.0) + weight / (60 + rank)
    return fused


def _weighted(
    per_field: list[dict[str, float]], weights: list[float], normalization: str = "minmax"
) -> dict[str, float]:
    """Convex combination of per-field normalised scores; a document a field does not score
    counts as that field's lowest normalised score."""
    every = {d for scores in per_field for d in scores}
    fused = dict.fromkeys(every, 0.0)
    for scores, weight in zip(per_field, weights, strict=True):
        values = list(scores.values())
        if normalization == "minmax":
            low, high = min(values), max(values)
            norm = {d: (s - low) / (high - low) if high > low else 1.0 for d, s in scores.items()}
        else:
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
            norm = {d: (s - mean) / std if std > 0 else 0.0 for d, s in scores.items()}
        floor = min(norm.values())
        for d in every:
            fused[d] += weight * norm.get(d, floor)
    return fused


@pytest.mark.parametrize("k", [N, 3])
@pytest.mark.parametrize(
    ("fusion", "weights", "normalization"),
    [
        ("rrf", None, "minmax"),
        ("rrf", {"m": 2.0, "s": 0.5, "b": 1.0}, "minmax"),
        ("weighted", {"m": 0.5, "s": 0.2, "b": 0.3}, "minmax"),
        ("weighted", {"m": 0.5, "s": 0.2, "b": 0.3}, "zscore"),
    ],
)
def test_exhaustive_fused_ranking_equals_brute_force_fusion(
    corpus, index, fusion, weights, normalization, k
) -> None:
    _, ids, texts, multi, single = corpus
    rng = np.random.default_rng(5)
    queries = [rng.standard_normal((int(t), DIM)).astype(np.float32) for t in (3, 2, 4)]
    query_texts = ["revenue growth", "cash debt risk", "audits"]
    retriever = FieldRetriever(index, fusion=fusion, weights=weights, normalization=normalization)
    result = retriever.search(
        query_texts,
        k=k,
        candidates=N,
        query_vectors={"m": queries, "s": [q.sum(0, keepdims=True) for q in queries]},
    )
    w = [1.0, 1.0, 1.0] if weights is None else [weights["m"], weights["s"], weights["b"]]
    for q, query in enumerate(queries):
        per_field = [
            {d: _maxsim_loop(query, multi[d]) for d in ids},
            {d: float(np.dot(query.sum(0), single[d][0])) for d in ids},
            _bm25_scores(ids, texts, query_texts[q]),  # pages without text are absent
        ]
        # RRF ranks only the pages a field matched: bm25's 0 is no match (#30 B10).
        matched = [*per_field[:2], {d: s for d, s in per_field[2].items() if s > 0}]
        fused = _rrf(matched, w) if fusion == "rrf" else _weighted(per_field, w, normalization)
        assert list(result.doc_ids[q]) == _ranked(fused)[:k]
        want = [fused[d] for d in _ranked(fused)[:k]]
        # z-scores sum to values near 0, where a relative tolerance alone means nothing.
        atol = 1e-6 if normalization == "zscore" else 0.0
        np.testing.assert_allclose(result.scores[q], want, rtol=1e-5, atol=atol)
        for name, scores in zip("msb", per_field, strict=True):
            got = result.field_scores[name][q]
            want = [scores.get(d, np.nan) for d in result.doc_ids[q]]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("fusion", "normalization"), [("rrf", "minmax"), ("weighted", "minmax"), ("weighted", "zscore")]
)
def test_fused_top_k_on_near_ties_is_exact_and_computes_few_exact_scores(
    tmp_path, monkeypatch, fusion, normalization
) -> None:
    # A float16 MaxSim field whose pages include exact copies and pages one float16 step
    # apart, fused with bm25: the top 3 (ties by doc_id) and every score in it equal brute
    # force over the stored values, while only the scores the top 3 depends on are computed
    # exactly (all of them under z-score, whose mean and spread involve every candidate).
    from latemm.retrieval import field_parts  # the in-process part's exact pass

    rng = np.random.default_rng(21)
    base = rng.standard_normal((6, DIM)).astype(np.float16)
    pages = [rng.standard_normal((int(t), DIM)).astype(np.float16) for t in rng.integers(2, 8, 40)]
    for i in range(6):
        twin = base.copy()
        if i % 2:
            twin[i, i] = np.nextafter(twin[i, i], np.float16(9))
        pages.insert(5 * i + 2, twin)
    pages.insert(7, base.copy())
    ids = [f"t{i:02d}" for i in range(len(pages))]
    texts = [" ".join(rng.choice(WORDS, 4)) for _ in pages]
    path = tmp_path / "corpus.parquet"
    pq.write_table(
        pa.table(
            {"doc_id": ids, "text": texts, "emb": [p.astype(np.float32).tolist() for p in pages]}
        ),
        path,
    )
    index_fields(
        path, tmp_path / "idx", {"m": "embedding:emb", "b": "bm25"}, dtype="float16", progress=False
    )
    computed = []
    exact_scores = field_parts.rescore_chosen

    def counting(index, flat, offsets, cands, chosen, device=None):
        computed.append(int(chosen.sum()))
        return exact_scores(index, flat, offsets, cands, chosen, device)

    monkeypatch.setattr(field_parts, "rescore_chosen", counting)
    queries = [base[[0, 2, 4]].astype(np.float32), base[[1, 3]].astype(np.float32) + 0.01]
    query_texts = ["cash growth", "audit risk"]
    retriever = FieldRetriever(tmp_path / "idx", fusion=fusion, normalization=normalization)
    result = retriever.search(query_texts, k=3, candidates=len(ids), query_vectors={"m": queries})
    for q, query in enumerate(queries):
        per_field = [
            {
                d: _maxsim_loop(query, page.astype(np.float32))
                for d, page in zip(ids, pages, strict=True)
            },
            _bm25_scores(ids, texts, query_texts[q]),
        ]
        fused = (
            _rrf(per_field, [1.0, 1.0])
            if fusion == "rrf"
            else _weighted(per_field, [1.0, 1.0], normalization)
        )
        assert list(result.doc_ids[q]) == _ranked(fused)[:3]
        np.testing.assert_allclose(
            result.field_scores["m"][q], [per_field[0][d] for d in _ranked(fused)[:3]], rtol=1e-6
        )
        atol = 1e-6 if normalization == "zscore" else 0.0
        np.testing.assert_allclose(
            result.scores[q], [fused[d] for d in _ranked(fused)[:3]], rtol=1e-5, atol=atol
        )
    if normalization == "zscore":
        assert sum(computed) == 2 * len(ids)
    else:
        assert 0 < sum(computed) < len(ids)  # of 2 x 47 candidate scores


def test_single_vector_first_stage_with_multi_vector_rescoring_equals_brute_force(
    corpus, index
) -> None:
    _, ids, _, multi, _ = corpus
    rng = np.random.default_rng(6)
    queries = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(4)]
    # The single-vector field seeds the candidates and weighs 0 in the final ranking.
    retriever = FieldRetriever(index, fields=["s"], rescore_fields=["m"], weights={"s": 0, "m": 1})
    result = retriever.search(
        ["x"] * 4,
        k=10,
        candidates=N,
        query_vectors={"m": queries, "s": [q.sum(0, keepdims=True) for q in queries]},
    )
    for q, query in enumerate(queries):
        exact = {d: _maxsim_loop(query, multi[d]) for d in ids}
        assert list(result.doc_ids[q]) == _ranked(exact)[:10]
        np.testing.assert_allclose(
            result.maxsim_scores[q], [exact[d] for d in _ranked(exact)[:10]], rtol=1e-5
        )


def test_single_vector_index_first_stage_is_exact_inner_product(tmp_path, corpus) -> None:
    _, ids, _, _, single = corpus
    config = IndexConfig(dim=DIM, dtype="float32", single_vector=True)
    assert IndexConfig.from_dict(config.to_dict()) == config
    with create(tmp_path / "sv", config) as writer:
        writer.add(ids, [single[d] for d in ids])
        with pytest.raises(InputError, match="single-vector"):
            writer.add(["two"], [np.ones((2, DIM), np.float32)])
        writer.commit()
    queries = [np.random.default_rng(1).standard_normal((3, DIM)).astype(np.float32)]
    got = Retriever(Index.open(tmp_path / "sv")).search_embeddings(queries, k=5, rescore=False)
    dots = {d: float(np.dot(queries[0].sum(0), single[d][0])) for d in ids}
    assert list(got.doc_ids[0]) == _ranked(dots)[:5]
    assert Index.open(tmp_path / "sv").stats()["fde_dimension"] is None


def test_layout_on_disk_and_pages_a_field_cannot_read(index) -> None:
    manifest = json.loads((index / "fields.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION  # 2: the index has a page store
    assert [(f["name"], f["kind"], f["reads"]) for f in manifest["fields"]] == [
        ("m", "multi", "embedding"),
        ("s", "single", "embedding"),
        ("b", "bm25", "text"),
    ]
    assert (index / "fields" / "m" / "manifest.json").is_file()
    bm25_dir = index / "fields" / "b" / manifest["fields"][2]["options"]["dir"]
    assert not list(bm25_dir.glob("*.pkl")) and (bm25_dir / "params.index.json").is_file()
    np.load(bm25_dir / "data.csc.index.npy", allow_pickle=False)
    assert len(Index.open(index / "fields" / "m")) == N
    # Every 7th page has no text: absent from the bm25 field only.
    assert manifest["fields"][2]["options"]["documents"] == N - len(range(0, N, 7))
    assert "emb_single" not in Index.open(index / "fields" / "m").segments[0].schema.names


def test_bm25_fields_record_their_tokenizer_and_keep_it(corpus, tmp_path) -> None:
    path = tmp_path / "idx"
    index_fields(corpus[0], path, {"b": "bm25", "plain": "bm25:stemmer=none"}, progress=False)
    spec = {f.name: f for f in read_fields(path).fields}
    assert spec["b"].options["tokenizer"] == {"stopwords": "en", "stemmer": "english"}
    assert spec["plain"].options["tokenizer"] == {"stopwords": "en", "stemmer": None}

    def top(field: str, query: str) -> list:
        result = FieldRetriever(path, fields=[field]).search([query], k=N)
        return [(d, s) for d, s in zip(result.doc_ids[0], result.scores[0], strict=True) if s > 0]

    # Stemmed, "audits" and "audit" are one term; unstemmed they are two.
    assert top("b", "audits") == top("b", "audit")
    assert top("plain", "audits") != top("plain", "audit")
    with pytest.raises(InputError, match="bm25 field 'plain' was built with tokenizer"):
        index_fields(corpus[0], path, [parse_field("plain=bm25:stemmer=porter")], progress=False)
    # A field built before the tokenizer was recorded keeps what it used: no stemmer.
    manifest = json.loads((path / "fields.json").read_text())
    del manifest["fields"][1]["options"]["tokenizer"]
    (path / "fields.json").write_text(json.dumps(manifest))
    legacy = top("plain", "audits")
    index_fields(corpus[0], path, [parse_field("plain=bm25")], progress=False)
    assert read_fields(path).get("plain").options["tokenizer"]["stemmer"] is None
    assert top("plain", "audits") == legacy
    with pytest.raises(InputError, match="bm25 options 'lang=en': expected stemmer"):
        parse_field("x=bm25:lang=en")
    with pytest.raises(InputError, match="bm25 stemmer 'klingon' is not a Snowball algorithm"):
        parse_field("k=bm25:stemmer=klingon")


def test_a_field_added_later_is_the_only_one_encoded(corpus, tmp_path) -> None:
    path = tmp_path / "idx"
    index_fields(corpus[0], path, {"b": "bm25"}, progress=False)
    before = json.loads((path / "fields.json").read_text())["fields"][0]
    index_fields(corpus[0], path, {"m": "embedding:emb_multi"}, progress=False)
    after = json.loads((path / "fields.json").read_text())["fields"]
    assert [f["name"] for f in after] == ["b", "m"]
    assert after[0] == before  # the bm25 field was not rebuilt


def test_an_old_single_field_index_opens_as_field_default(tmp_path, corpus) -> None:
    _, ids, _, multi, _ = corpus
    with create(tmp_path / "old", IndexConfig(dim=DIM, dtype="float32")) as writer:
        writer.add(ids, [multi[d] for d in ids])
        writer.commit()
    assert read_fields(tmp_path / "old").names == ["default"]
    query = [np.ones((2, DIM), np.float32)]
    fused = FieldRetriever(tmp_path / "old").search(
        ["q"], k=5, candidates=N, query_vectors={"default": query}
    )
    plain = Retriever(Index.open(tmp_path / "old")).search_embeddings(query, k=5, candidates=N)
    assert list(fused.doc_ids[0]) == list(plain.doc_ids[0])
    with pytest.raises(InputError, match="built before named fields: its one field is 'default'"):
        FieldRetriever(tmp_path / "old", fields=["text"])
    with pytest.raises(InputError, match="single-field index"):
        index_fields(corpus[0], tmp_path / "old", {"b": "bm25"}, progress=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fields": ["m", "nope"]}, "unknown field 'nope'; this index has field\\(s\\) m, s, b"),
        ({"weights": {"m": -1.0}}, "field 'm' has weight -1.0"),
        ({"weights": {"m": 0.0, "b": 0.0}}, "all zero"),
        (
            {"fields": ["m"], "weights": {"b": 1.0}},
            "field\\(s\\) 'b' that are not among the fused fields \\(m\\)",
        ),
        ({"fusion": "max"}, "--fusion must be one of rrf, weighted"),
        ({"rescore_fields": ["b"]}, "--rescore-field 'b' is a bm25 field"),
        ({"preset": "image-only"}, "preset 'image-only' searches fields that read image"),
    ],
)
def test_bad_search_requests_name_the_field(index, options, message) -> None:
    with pytest.raises(InputError, match=message):
        FieldRetriever(index, **options)


def test_image_query_on_a_text_field_and_missing_query_vectors_name_the_field(index) -> None:
    from latemm.encoders.base import Page

    retriever = FieldRetriever(index, fields=["b"])
    with pytest.raises(InputError, match="query 0 has no text; field 'b' \\(bm25, reads text\\)"):
        retriever.search([Page(image=b"png")], k=3)
    with pytest.raises(InputError, match="field 'm' holds precomputed vectors \\('emb_multi'\\)"):
        FieldRetriever(index, fields=["m"]).search(["q"], k=3)


def test_a_missing_encoder_is_an_error_naming_the_field(corpus, tmp_path) -> None:
    with pytest.raises(InputError, match="field 'text': cannot load encoder"):
        index_fields(
            corpus[0], tmp_path / "idx", {"text": str(tmp_path / "no-such-model")}, progress=False
        )


def test_where_filters_every_field(index) -> None:
    queries = [np.ones((2, DIM), np.float32)]
    result = FieldRetriever(index).search(
        ["revenue"],
        k=N,
        candidates=N,
        where="year >= 2030",
        query_vectors={"m": queries, "s": [q.sum(0, keepdims=True) for q in queries]},
    )
    got = [d for d in result.doc_ids[0] if d is not None]
    assert sorted(got) == [f"p{i:02d}" for i in range(30, N)]


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    from tests.latemm.tiny_models import build_colbert_pylate

    return build_colbert_pylate(tmp_path_factory.mktemp("models") / "colbert")


def test_cli_fields_fusion_weights_presets_and_info(
    tiny_text_model, corpus, tmp_path, capsys
) -> None:
    from latemm.cli import main

    idx, run = tmp_path / "idx", tmp_path / "run.parquet"
    queries = tmp_path / "q.parquet"
    pq.write_table(pa.table({"query_id": ["a", "b"], "text": ["revenue growth", "cash"]}), queries)
    args = ["index", str(corpus[0]), "--index", str(idx), "--quiet"]
    fields = ["--field", f"text={tiny_text_model}", "--field", "dense=" + str(tiny_text_model)]
    assert main([*args, *fields, "--field-kind", "dense=single", "--field", "b=bm25"]) == 0
    assert "text: 30 documents" in capsys.readouterr().out  # pages without text are left out
    spec = {f.name: f for f in read_fields(idx).fields}
    assert spec["dense"].kind == "single" and spec["dense"].encoder["options"]["pooling"] == "mean"
    search = ["search", str(idx), str(queries), "--out", str(run), "--k", "5", "--quiet"]
    assert main([*search, "--fusion", "weighted", "--weights", "text=0.7,b=0.3,dense=0"]) == 0
    table = pq.read_table(run)
    assert {"score_text", "score_dense", "score_b", "fde_score", "rerank_score"} <= set(
        table.column_names
    )
    assert table.num_rows == 10
    text_col = table.column("score_text").to_numpy()
    assert not np.isnan(text_col).any()
    assert main([*search, "--preset", "text-only"]) == 0
    assert main([*search, "--fields", "b"]) == 0
    solo = pq.read_table(run)
    assert solo.column("score").to_pylist() != [] and "score_text" not in solo.column_names
    capsys.readouterr()
    assert main([*search, "--fields", "b,nope"]) == 2
    assert "latemm search: error: unknown field 'nope'" in capsys.readouterr().err
    assert main([*search, "--weights", "text=-1"]) == 2
    assert "field 'text' has weight -1.0" in capsys.readouterr().err
    assert main(["verify", str(idx)]) == 0
    capsys.readouterr()
    bm25_dir = next((idx / "fields" / "b").iterdir())
    (bm25_dir / "vocab.index.json").write_text("{}")
    assert main(["verify", str(idx)]) == 1
    assert "field 'b': " in capsys.readouterr().err
    assert main(["info", str(idx)]) == 2  # opening checks the damaged bm25 files
    assert "BM25 field files are damaged" in capsys.readouterr().err
    (bm25_dir / "vocab.index.json").unlink()
    index_fields(corpus[0], idx, [parse_field("b=bm25")], progress=False)  # rebuilds the field
    assert main(["info", str(idx)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [f["name"] for f in info["fields"]] == ["text", "dense", "b"]
    assert info["fields"][0]["stats"]["documents"] == 30


def test_python_api_fields(tiny_text_model, corpus, tmp_path) -> None:
    import latemm

    manifest = latemm.build_index(
        corpus[0], tmp_path / "idx", fields={"text": tiny_text_model, "bm25": "bm25"}
    )
    assert manifest.names == ["text", "bm25"]
    rrf = latemm.search(tmp_path / "idx", ["revenue growth"], k=5)
    weighted = latemm.search(
        tmp_path / "idx", ["revenue growth"], k=5, fusion="weighted", weights={"text": 1, "bm25": 1}
    )
    for run in (rrf, weighted):
        assert run.num_rows == 5 and {"score_text", "score_bm25"} <= set(run.column_names)
    text_only = latemm.search(tmp_path / "idx", ["revenue growth"], k=5, preset="text-only")
    assert text_only.num_rows == 5


def test_query_file_embeddings_serve_the_precomputed_field(index, tmp_path) -> None:
    from latemm.cli import main

    rng = np.random.default_rng(9)
    queries = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(2)]
    qfile = tmp_path / "q.parquet"
    table = {"query_id": ["a", "b"], "text": ["cash", "audit risk"]}
    pq.write_table(pa.table({**table, "embedding": [q.tolist() for q in queries]}), qfile)
    run = tmp_path / "run.parquet"
    args = ["search", str(index), str(qfile), "--out", str(run), "--fields", "m,b", "--k", "3"]
    assert main([*args, "--candidates", str(N), "--quiet", "--trec", str(tmp_path / "r.trec")]) == 0
    got = pq.read_table(run)
    want = FieldRetriever(index, fields=["m", "b"]).search(
        ["cash", "audit risk"], k=3, candidates=N, query_vectors={"m": queries}
    )
    assert got.column("doc_id").to_pylist() == [d for row in want.doc_ids for d in row]
    assert len((tmp_path / "r.trec").read_text().splitlines()) == 6


@pytest.mark.slow  # builds a tiny Qwen2-VL (test_reranker covers the reranker itself)
def test_fused_results_are_reranked_from_the_fields_pages(index, tmp_path_factory) -> None:
    pytest.importorskip("torchvision")  # Qwen2-VL's processor needs its video processor
    from latemm.encoders.base import Page
    from latemm.retrieval.reranker import MLLMReranker
    from tests.latemm.tiny_models import build_qwen2_vl

    reranker = MLLMReranker(str(build_qwen2_vl(tmp_path_factory.mktemp("qwen"))), template="yesno")
    queries = [np.ones((2, DIM), np.float32)]
    vectors = {"m": queries, "s": [q.sum(0, keepdims=True) for q in queries]}
    plain = FieldRetriever(index).search(["cash"], k=8, query_vectors=vectors)
    reranked = FieldRetriever(index, reranker=reranker, rerank_depth=5).search(
        ["cash"], k=8, query_vectors=vectors
    )
    top = list(plain.doc_ids[0, :5])
    assert sorted(reranked.doc_ids[0, :5]) == sorted(top)
    assert list(reranked.doc_ids[0, 5:]) == list(plain.doc_ids[0, 5:])
    pages = FieldRetriever(index).pages(top)
    want = reranker.score("cash", [pages[d] for d in top])
    by_doc = dict(zip(top, want, strict=True))
    got = reranked.rerank_scores[0, :5]
    np.testing.assert_allclose(got, [by_doc[d] for d in reranked.doc_ids[0, :5]], rtol=1e-5)
    assert list(got) == sorted(got, reverse=True)
    # A page without text (p00) is read from the vector field's metadata, as an empty page.
    assert FieldRetriever(index).pages(["p00"])["p00"] == Page(text=None, image=None)


def test_weights_text_is_parsed_or_refused() -> None:
    from latemm.ranking.fusion import parse_weights

    assert parse_weights("text=0.7, bm25=0.3") == {"text": 0.7, "bm25": 0.3}
    for bad in ("text", "text=high", "=1", ","):
        with pytest.raises(InputError, match="--weights"):
            parse_weights(bad)


def test_single_vector_field_is_stored_as_a_single_vector_index(index) -> None:
    # Its faiss index holds the raw vectors (not an FDE): the first stage is an exact dot product.
    config = Index.open(index / "fields" / "s").config
    assert config.single_vector and config.faiss_dimension == config.dim
    assert not Index.open(index / "fields" / "m").config.single_vector


# ------------------------------------------------------------------ delete, compact, resume
GONE = ["p01", "p14", "p20"]  # p14 has no text: it is in the vector fields only
FIELDS = {"m": "embedding:emb_multi", "s": "single:embedding:emb_single", "b": "bm25"}


def _build(corpus_path, path, drop=()):
    import pyarrow.compute as pc

    table = pq.read_table(corpus_path)
    if drop:
        table = table.filter(pc.invert(pc.is_in(table["doc_id"], pa.array(list(drop)))))
    source = path.with_suffix(".parquet")
    pq.write_table(table, source)
    index_fields(source, path, FIELDS, dtype="float32", progress=False)
    return path


@pytest.fixture(scope="module")
def without_gone(corpus, tmp_path_factory):
    """The index built from the corpus without the GONE pages: what deleting them must give."""
    return _build(corpus[0], tmp_path_factory.mktemp("without") / "idx", GONE)


def _fused(path):
    rng = np.random.default_rng(11)
    queries = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(3)]
    vectors = {"m": queries, "s": [q.sum(0, keepdims=True) for q in queries]}
    texts = ["revenue growth", "cash debt risk", "audit"]
    return FieldRetriever(path, fusion="weighted").search(
        texts, k=N, candidates=N, query_vectors=vectors
    )


def _assert_same_results(got, want) -> None:
    assert got.doc_ids.tolist() == want.doc_ids.tolist()
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)
    for name in FIELDS:
        np.testing.assert_allclose(got.field_scores[name], want.field_scores[name], rtol=1e-5)


def _held(path):
    from latemm.index.field_maintenance import held_ids

    return {spec.name: held_ids(path, spec) for spec in read_fields(path).fields}


def test_delete_and_compact_change_every_field_as_a_build_without_the_pages(
    corpus, without_gone, tmp_path, capsys
) -> None:
    from latemm.cli import main

    idx = _build(corpus[0], tmp_path / "idx")
    assert main(["delete", str(idx), "--ids", *GONE]) == 0
    assert f"deleted 3 documents from every field of {idx}" in capsys.readouterr().out
    assert _held(idx) == _held(without_gone)
    assert not any(set(GONE) & ids for ids in _held(idx).values())
    _assert_same_results(_fused(idx), _fused(without_gone))
    assert main(["delete", str(idx), "--ids", "p01"]) == 2
    err = capsys.readouterr().err
    assert f"doc_id 'p01' is in no field of {idx} (fields: m, s, b); nothing was deleted" in err
    assert main(["delete", str(idx), "--ids", "p01", "p02", "--missing-ok"]) == 0
    assert "deleted 1 documents" in capsys.readouterr().out
    assert main(["compact", str(idx)]) == 0
    assert "compacted" in capsys.readouterr().out
    for name in ("m", "s"):
        segments = Index.open(idx / "fields" / name).segments
        assert len(segments) == 1 and not segments[0].deleted.any()
    assert len(Index.open(idx / "fields" / "m")) == N - 4
    assert main(["verify", str(idx)]) == 0
    # Every page deleted: the bm25 field is empty, and searching it finds nothing.
    from latemm.index.field_maintenance import delete

    delete(idx, [f"p{i:02d}" for i in range(N)], missing_ok=True)
    assert FieldRetriever(idx, fields=["b"]).search(["cash"], k=3).doc_ids.tolist() == [[None] * 3]


@pytest.mark.parametrize("applied", ["none", "one field", "all"])
def test_a_delete_cut_short_is_finished_when_the_index_is_next_opened(
    corpus, without_gone, tmp_path, capsys, applied
) -> None:
    from latemm.cli import main
    from latemm.index.field_maintenance import begin_delete, delete, recover
    from latemm.index.fields import locked

    idx = _build(corpus[0], tmp_path / "idx")
    # The state a process killed midway leaves: the journal, and the fields changed so far.
    if applied == "all":
        delete(idx, GONE)
    begin_delete(idx, GONE)
    if applied == "one field":
        path = idx / "fields" / "m"
        with create(path, Index.open(path).config) as writer:
            writer.delete(GONE, missing_ok=True)
            writer.commit()
    assert main(["verify", str(idx)]) == 1
    assert "a delete of 3 document(s) was cut short" in capsys.readouterr().err
    # Readers never write (issue 26): a search, even beside the writer holding the lock, leaves
    # the journal's ids out of every field and gives the clean index's results...
    with locked(idx):
        _assert_same_results(_fused(idx), _fused(without_gone))
    assert (idx / "journal.json").exists()
    assert main(["info", str(idx)]) == 0
    assert json.loads(capsys.readouterr().out)["unfinished_delete"] == 3
    # ...and the next writer finishes the delete, warning that it did.
    with pytest.warns(UserWarning, match="finished a delete of 3 document\\(s\\) that was int"):
        recover(idx)
    assert not (idx / "journal.json").exists()
    assert _held(idx) == _held(without_gone)
    _assert_same_results(_fused(idx), _fused(without_gone))
    assert main(["verify", str(idx)]) == 0


def test_a_reader_opens_every_field_from_one_state_of_the_index(
    corpus, without_gone, tmp_path, monkeypatch
) -> None:
    """A delete that starts and changes a field while a reader opens the fields (issue 30 P16):
    the reader notices, opens them again, and leaves the delete's ids out; it never fails and
    never sees fields that disagree."""
    import latemm.retrieval.field_search as field_search
    from latemm.index.field_maintenance import begin_delete

    idx = _build(corpus[0], tmp_path / "idx")
    opened = []
    real_open = field_search.open_field

    def open_during_a_delete(path, spec, **kwargs):
        if not opened:  # the first field opened: then a writer begins, and changes field m
            begin_delete(idx, GONE)
            with create(idx / "fields" / "m", Index.open(idx / "fields" / "m").config) as writer:
                writer.delete(GONE, missing_ok=True)
                writer.commit()
        opened.append(spec.name)
        return real_open(path, spec, **kwargs)

    monkeypatch.setattr(field_search, "open_field", open_during_a_delete)
    _assert_same_results(_fused(idx), _fused(without_gone))
    assert len(opened) > len(FIELDS)  # opened a second time
    assert (idx / "journal.json").exists()  # the reader left the delete to the next writer


def test_an_interrupted_field_search_resumes_only_with_the_same_arguments(
    corpus, tmp_path, capsys
) -> None:
    from latemm.cli import main

    idx = _build(corpus[0], tmp_path / "idx")
    rng = np.random.default_rng(12)
    vectors = [rng.standard_normal((3, DIM)).astype(np.float32).tolist() for _ in range(4)]
    qfile, run, clean = tmp_path / "q.parquet", tmp_path / "run.parquet", tmp_path / "c.parquet"
    ids = ["qa", "qb", "qc", "qd"]

    def write_queries(last: str) -> None:
        texts = ["cash", "audit risk", "revenue", last]
        pq.write_table(pa.table({"query_id": ids, "text": texts, "embedding": vectors}), qfile)

    write_queries("")  # the bm25 field cannot read qd: the search stops there
    args = ["search", str(idx), str(qfile), "--fields", "m,b", "--k", "4", "--quiet"]
    # Named: the default became auto (#31); weighted, for --normalization applies to it alone.
    args += ["--fusion", "weighted"]
    assert main([*args, "--out", str(run), "--batch-size", "1"]) == 2
    assert "row 3, query_id 'qd': query 0 has no text; field 'b'" in capsys.readouterr().err
    parts = tmp_path / ".run.parquet.parts"
    assert len(list(parts.glob("part-*.parquet"))) == 3
    assert json.loads((parts / "search.json").read_text())["plan"]["fields"] == ["m", "b"]
    write_queries("growth")
    for changed, what in (
        (["--fusion", "auto"], "'fusion': 'weighted'"),
        (["--normalization", "zscore"], "'normalization': 'minmax'"),
        (["--k", "5"], "k 4 -> 5"),
    ):
        assert main([*args, *changed, "--out", str(run), "--batch-size", "1"]) == 2
        err = capsys.readouterr().err
        assert "holds the finished batches of an interrupted search with other arguments" in err
        assert what in err
    assert main([*args, "--out", str(clean)]) == 0
    assert main([*args, "--out", str(run), "--batch-size", "1"]) == 0  # resumes
    assert pq.read_table(run).equals(pq.read_table(clean)) and not parts.exists()
    # Parts of a search over the index as it was are refused once a field changed.
    write_queries("")
    assert main([*args, "--out", str(run), "--batch-size", "1"]) == 2
    assert main(["delete", str(idx), "--ids", "p03"]) == 0
    write_queries("growth")
    capsys.readouterr()
    assert main([*args, "--out", str(run), "--batch-size", "1"]) == 2
    assert "generation {'b': 'g000001', 'm': 1} -> {'b': 'g000002', 'm': 2}" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("method", "normalization"), [("rrf", "minmax"), ("weighted", "minmax"), ("weighted", "zscore")]
)
def test_fuse_bounds_hold_for_every_choice_and_are_fuse_when_known(method, normalization) -> None:
    from latemm.ranking import fusion

    rng = np.random.default_rng(3)
    ids = np.array([[f"d{i:02d}" for i in range(12)] for _ in range(4)], dtype=object)
    ids[3, 10:] = None  # padding
    exact = [np.round(rng.standard_normal(ids.shape), 1) for _ in range(2)]  # ties included
    exact[1][0, :4] = np.nan  # no score in the second field
    widths = [
        np.where(rng.random(ids.shape) < 0.5, 0.0, 0.15 * rng.random(ids.shape)) for _ in exact
    ]
    lows = [e - w for e, w in zip(exact, widths, strict=True)]
    highs = [e + w for e, w in zip(exact, widths, strict=True)]
    args = {"normalization": normalization}
    low, high = fusion.fuse_bounds(method, lows, highs, ids, [1.0, 0.5], **args)
    for _ in range(50):
        choice = [
            lo + rng.random(ids.shape) * (hi - lo) for lo, hi in zip(lows, highs, strict=True)
        ]
        fused = fusion.fuse(method, choice, ids, [1.0, 0.5], **args)
        real = ~np.isnan(fused)
        assert (low[real] <= fused[real] + 1e-12).all() and (
            fused[real] <= high[real] + 1e-12
        ).all()
    known_low, known_high = fusion.fuse_bounds(method, exact, exact, ids, [1.0, 0.5], **args)
    want = fusion.fuse(method, exact, ids, [1.0, 0.5], **args)
    np.testing.assert_array_equal(known_low, want)
    np.testing.assert_array_equal(known_high, want)
    # Every candidate unsure: what it depends on includes its own unknown score.
    unsure = np.ones(ids.shape, bool)
    for lo, hi in zip(lows, highs, strict=True):
        assert (fusion.entangled(method, lo, hi, unsure, **args) == (lo < hi)).all()
