"""latemm inside mteb: ``LatemmSearch`` implements mteb 2.x's ``SearchProtocol`` over latemm's
own index and search path (``latemm.build_index`` and ``latemm.search``, the functions the CLI
runs), so ``mteb.evaluate(LatemmSearch(...), tasks)`` scores the whole pipeline (FDE first
stage, exact MaxSim, fused fields, MLLM rerank) on mteb's tasks.

``mteb`` is an optional dependency (``pip install 'latemm[mteb]'``), imported only when a
``LatemmSearch`` is built. May import ``latemm.api`` and ``index_store``; never imported by
them.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from index_store.errors import InputError, require

# What each latemm field source becomes in mteb's model_type vocabulary.
_BM25 = "bm25"


def _mteb() -> Any:
    return require("mteb", "mteb", "mteb")


def document_texts(corpus: Any) -> list[str]:
    """Each corpus row's text as mteb's own models read it: ``title + " " + text``, stripped
    (``mteb._create_dataloaders._corpus_to_dict``); rows without text give ``""``."""
    names = corpus.column_names
    if "text" not in names:
        return [""] * len(corpus)
    texts = [t or "" for t in corpus["text"]]
    if "title" not in names:
        return [t.strip() for t in texts]
    return [
        (f"{title} {text}" if title else text).strip()
        for title, text in zip(corpus["title"], texts, strict=True)
    ]


def _turns(conversation: Sequence[Any], query_id: str) -> str:
    """A dialogue (a list of turns) as one query, as mteb flattens it: ``"role: content; ..."``
    for turns given as ``{role, content}``, the turns joined by ``"; "`` for plain strings."""
    parts = []
    for i, turn in enumerate(conversation):
        if isinstance(turn, str):
            parts.append(turn)
        elif isinstance(turn, Mapping) and "role" in turn and "content" in turn:
            parts.append(f"{turn['role']}: {turn['content']}")
        else:
            raise InputError(
                f"query {query_id!r}: turn {i} of the conversation is {turn!r}; each turn must "
                "be a string or a {'role': ..., 'content': ...} mapping"
            )
    return "; ".join(parts)


def query_texts(
    queries: Any, *, template: str | None = None, prompt: str | None = None
) -> list[str]:
    """Each query's text as the encoder gets it.

    A dialogue (``text`` a list of turns) is flattened as mteb does. Without ``template`` the
    row's ``instruction`` follows the text (``text + " " + instruction``, mteb's rule for
    encoders that take no instructions); the encoder then adds its own query prefix or template
    (ColBERT's ``[Q]``, ColPali's and ColQwen2's query processing). With ``template`` (an
    instruction-tuned encoder, e.g. ``"Instruct: {instruction}\\nQuery: {query}"``) the row's
    instruction, or else the task's ``prompt``, fills ``{instruction}``."""
    names = queries.column_names
    if "text" not in names:
        return [""] * len(queries)
    ids = [str(i) for i in queries["id"]]
    raw = queries["text"]
    instructions = queries["instruction"] if "instruction" in names else [None] * len(queries)
    out = []
    for query_id, text, instruction in zip(ids, raw, instructions, strict=True):
        if isinstance(text, list):
            text = _turns(text, query_id)
            if instruction and template is None:  # mteb puts it in front of a dialogue
                out.append(f"{instruction} {text}")
                continue
        text = text or ""
        if template is not None:
            given = instruction or prompt
            out.append(template.format(instruction=given or "", query=text) if given else text)
        elif instruction:
            out.append(f"{text} {instruction}")
        else:
            out.append(text)
    return out


def _image_bytes(image: Any) -> bytes | None:
    """PNG bytes of a PIL image (as ``datasets`` decodes an ``Image`` feature); bytes pass."""
    if image is None:
        return None
    if isinstance(image, bytes):
        return image
    if isinstance(image, Mapping) and image.get("bytes") is not None:
        return bytes(image["bytes"])
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _table(dataset: Any, texts: list[str], id_column: str, *, images: bool) -> pa.Table:
    """A latemm corpus or queries table (``doc_id``/``query_id``, ``text``, ``image``)."""
    columns: dict[str, Any] = {id_column: [str(i) for i in dataset["id"]]}
    if any(texts):
        columns["text"] = [t if t else None for t in texts]
    if images and "image" in dataset.column_names:
        columns["image"] = pa.array([_image_bytes(i) for i in dataset["image"]], pa.binary())
    return pa.table(columns)


class LatemmSearch:
    """mteb's ``SearchProtocol`` over a latemm index.

    Parameters
    ----------
    encoder
        Hub id or local folder of the encoder (one multi-vector field), or None with
        ``fields``.
    fields
        Named fields instead (``{"text": latemm.minilm_path(), "bm25": "bm25"}``, values as
        for ``latemm index --field``), searched in phases and fused.
    fusion, weights, normalization, rrf_k, rescore_fields
        Field fusion, as for ``latemm.search``.
    candidates
        First-stage candidates per query (latemm's default when None).
    rerank, rerank_depth
        An MLLM reranker (hub id or folder) applied to each query's top ``rerank_depth``.
    query_template
        For instruction-tuned encoders: ``"...{instruction}...{query}..."``; see
        ``query_texts``. None (the default) appends a row's instruction as mteb does for
        encoders without instructions.
    work_dir
        Where the per-task indexes are written (default: a temporary folder removed with this
        object).
    index_options
        Passed to ``latemm.build_index`` (``dtype``, ``faiss_factory``, ``batch_size``, ...).
    name
        The model name mteb records (``org/name``); default ``latemm/<encoder or fields>``.
    """

    def __init__(
        self,
        encoder: str | Path | None = None,
        *,
        fields: Mapping[str, str] | None = None,
        fusion: str | None = None,
        weights: Mapping[str, float] | None = None,
        normalization: str | None = None,
        rrf_k: int | None = None,
        rescore_fields: Sequence[str] | None = None,
        candidates: int | None = None,
        rerank: str | Path | None = None,
        rerank_depth: int = 20,
        query_template: str | None = None,
        work_dir: str | Path | None = None,
        index_options: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        _mteb()
        if (encoder is None) == (fields is None):
            raise InputError(
                "LatemmSearch needs encoder= (one field) or fields= (named fields), exactly one"
            )
        if query_template is not None and "{query}" not in query_template:
            raise InputError(
                f"query_template {query_template!r} has no {{query}} placeholder; e.g. "
                "'Instruct: {instruction}\\nQuery: {query}'"
            )
        if candidates is not None and (not isinstance(candidates, int) or candidates < 1):
            raise InputError(f"candidates must be a positive integer, got {candidates!r}")
        self.encoder = None if encoder is None else str(encoder)
        self.fields = None if fields is None else {k: str(v) for k, v in fields.items()}
        self.fused = fields is not None
        self.search_options: dict[str, Any] = {
            "fusion": fusion,
            "weights": None if weights is None else dict(weights),
            "normalization": normalization,
            "rrf_k": rrf_k,
            "rescore_fields": None if rescore_fields is None else list(rescore_fields),
        }
        self.candidates = candidates
        self.rerank = None if rerank is None else str(rerank)
        self.rerank_depth = rerank_depth
        self.query_template = query_template
        self.index_options = dict(index_options or {})
        self._tmp = None if work_dir is not None else tempfile.TemporaryDirectory(prefix="latemm-")
        self.work_dir = Path(work_dir) if work_dir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self._name = name
        self._loaded: Any = None  # the encoder, loaded once for every task
        self._reranker: Any = None
        self._index: Path | None = None
        self._doc_count = 0

    # -- the encoder ----------------------------------------------------------------------------

    def _encoder(self) -> Any:
        if self._loaded is None and self.encoder is not None:
            from latemm.encoders import load_encoder

            self._loaded = load_encoder(self.encoder)
        return self._loaded

    def _field_kinds(self) -> dict[str, str]:
        """Each field's kind, from its source string, without loading a model."""
        kinds = {}
        for name, source in (self.fields or {"default": self.encoder or ""}).items():
            if source == _BM25 or source.startswith(_BM25 + ":"):
                kinds[name] = "sparse"
            elif source.startswith("single:"):
                kinds[name] = "dense"
            else:
                kinds[name] = "late-interaction"
        return kinds

    @property
    def mteb_model_meta(self) -> Any:
        """What mteb records about the model: the encoder(s), what they read, latemm's version;
        unknown figures (parameters, memory, training data) are None rather than guessed."""
        from mteb.models.model_meta import ModelMeta

        import latemm

        sources = self.fields or {"default": self.encoder or ""}
        kinds = sorted(set(self._field_kinds().values()))
        modalities = ["text"]
        if any(self._reads_images(s) for s in sources.values()):
            modalities = ["image", "text"]
        label = (
            _label(self.encoder)
            if self.encoder
            else "+".join(f"{k}={_label(v.removeprefix('single:'))}" for k, v in sources.items())
        )
        meta: dict[str, Any] = dict(
            loader=None,
            name=self._name or f"latemm/{label}",
            revision=f"latemm-{latemm.__version__}",
            release_date=None,
            languages=None,
            n_parameters=None,
            memory_usage_mb=None,
            max_tokens=None,
            embed_dim=None,
            license=None,
            open_weights=None,
            public_training_code=None,
            public_training_data=None,
            framework=["PyTorch"],
            reference="https://github.com/latemm/latemm",
            similarity_fn_name="MaxSim" if kinds == ["late-interaction"] else None,
            use_instructions=self.query_template is not None,
            training_datasets=None,
            adapted_from=self.encoder,
            modalities=modalities,
            model_type=["hybrid"] if len(kinds) > 1 else kinds,
        )
        return ModelMeta(**meta)

    @staticmethod
    def _reads_images(source: str) -> bool:
        """Whether an encoder source reads page images: its config names a vision model."""
        if source == _BM25 or source.startswith((_BM25 + ":", "embedding:")):
            return False
        from latemm.encoders import model_config

        name = source.removeprefix("single:")
        try:
            config = model_config(name)
        except Exception:  # an unreachable hub id: mteb only asks what it reads
            return False
        return "vision_config" in config or config.get("model_type") in {
            "colpali",
            "colqwen2",
            "colmodernvbert",
        }

    # -- SearchProtocol -------------------------------------------------------------------------

    def index(
        self,
        corpus: Any,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        encode_kwargs: Mapping[str, Any] | None = None,
        num_proc: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Write mteb's corpus as a latemm corpus (``doc_id``, ``text`` = title and text joined,
        ``image`` as PNG bytes where the task has images) and build a fresh latemm index of it."""
        import shutil

        from latemm.api import build_index

        if len(corpus) == 0:
            raise InputError(f"task {task_metadata.name} ({hf_subset}/{hf_split}) has no documents")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in task_metadata.name)
        folder = self.work_dir / f"{safe}-{hf_subset}-{hf_split}"
        if folder.exists():
            shutil.rmtree(folder)  # a fresh index per (task, subset, split)
        folder.mkdir(parents=True)
        images = "image" in getattr(task_metadata, "modalities", [])
        table = _table(corpus, document_texts(corpus), "doc_id", images=images)
        corpus_path = folder / "corpus.parquet"
        pq.write_table(table, corpus_path)
        options = dict(self.index_options)
        batch = (encode_kwargs or {}).get("batch_size")
        if batch is not None and "batch_size" not in options and not self.fused:
            options["batch_size"] = batch
        index_dir = folder / "index"
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="skipped .* rows")
            if self.fields is not None:
                build_index(corpus_path, index_dir, fields=dict(self.fields), **options)
            else:
                built = build_index(corpus_path, index_dir, encoder=self._encoder(), **options)
                if next(iter(built.doc_ids()), None) is None:
                    reads = " or ".join(getattr(self._encoder(), "reads", ("text", "image")))
                    raise InputError(
                        f"task {task_metadata.name} ({hf_subset}/{hf_split}): none of its "
                        f"{len(corpus)} documents has what the encoder reads ({reads}); "
                        f"{built.path} lists why (latemm info); pick an encoder for the task's "
                        "modalities"
                    )
        self._index = index_dir
        self._doc_count = len(corpus)

    def search(
        self,
        queries: Any,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        top_k: int,
        encode_kwargs: Mapping[str, Any] | None = None,
        top_ranked: Mapping[str, Sequence[str]] | None = None,
        num_proc: int | None = None,
        **kwargs: Any,
    ) -> dict[str, dict[str, float]]:
        """Search every query through ``latemm.search`` (the CLI's path) and return
        ``{query_id: {doc_id: score}}``. With ``top_ranked`` (reranking tasks) each query's
        ranking is over its listed documents only: every document is ranked, then the
        list's are kept."""
        from latemm.api import search

        if self._index is None:
            raise InputError("LatemmSearch.search was called before index(): index a corpus first")
        prompt = _task_prompt(task_metadata)
        texts = query_texts(queries, template=self.query_template, prompt=prompt)
        images = "image" in getattr(task_metadata, "modalities", [])
        table = _table(queries, texts, "query_id", images=images)
        if "text" not in table.column_names and "image" not in table.column_names:
            raise InputError(f"task {task_metadata.name}: its queries have neither text nor image")
        query_path = self._index.parent / "queries.parquet"
        pq.write_table(table, query_path)
        k = self._doc_count if top_ranked else min(top_k, self._doc_count)
        candidates = self._doc_count if top_ranked else self.candidates
        options = {key: v for key, v in self.search_options.items() if v is not None}
        run = search(
            self._index,
            query_path,
            k=k,
            candidates=candidates,
            encoder=None if self.fused else self._encoder(),
            reranker=self._load_reranker(),
            rerank_depth=self.rerank_depth,
            **options,
        )
        out: dict[str, dict[str, float]] = {
            str(q): {} for q in table.column("query_id").to_pylist()
        }
        for q, d, s in zip(
            run.column("query_id").to_pylist(),
            run.column("doc_id").to_pylist(),
            run.column("score").to_pylist(),
            strict=True,
        ):
            out[q][d] = float(s)
        if top_ranked:
            out = {
                q: {d: s for d, s in docs.items() if d in set(top_ranked.get(q, docs))}
                for q, docs in out.items()
            }
            out = {q: dict(list(docs.items())[:top_k]) for q, docs in out.items()}
        return out

    def _load_reranker(self) -> Any:
        if self.rerank is not None and self._reranker is None:
            from latemm.retrieval.reranker import MLLMReranker

            self._reranker = MLLMReranker(self.rerank)
        return self._reranker


def _label(source: str) -> str:
    """A short name for an encoder source: a hub id's model name, a local folder's last two
    parts (packaged models often end in a generic ``model/``)."""
    path = Path(source)
    if path.is_dir():
        return "-".join(path.resolve().parts[-2:])
    return source.rstrip("/").split("/")[-1]


def _task_prompt(task_metadata: Any) -> str | None:
    """The task's query prompt (``TaskMetadata.prompt``: a string or ``{"query": ...}``)."""
    prompt = getattr(task_metadata, "prompt", None)
    if isinstance(prompt, Mapping):
        prompt = prompt.get("query")
    return prompt if isinstance(prompt, str) and prompt else None
