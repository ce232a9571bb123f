"""Zero-shot multimodal-LLM reranking: the model reads the query and a page and answers whether
the page is relevant; the answer token's probability is the score.

One forward pass per batch of (query, page) pairs, left-padded, reading the logits of the next
token: no generation loop. Templates are selectable by name and overridable:

- ``monoqwen`` (default): MonoQwen2-VL's prompt, the page image then "Assert the relevance of the
  previous image document to the following query, answer True or False. The query is: {query}",
  with the model's chat template and ``add_generation_prompt=True``; score = softmax over the
  logits of "True" and "False", P(True).
- ``qwen3-vl-reranker``: the Qwen3-VL-Reranker prompt, a system message asking for "yes" or
  "no", then ``<Instruct>``, ``<Query>``, ``<Document>``; score = sigmoid(logit_yes - logit_no).
- ``yesno``: a generic yes/no question for other chat models; score = P(yes) over {yes, no}.

Scores are cached in SQLite keyed by (model, template, query, document) so repeated experiments
do not recompute them. Only this module and the encoders import transformers.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index_store.errors import InputError, require
from latemm.encoders.base import Page
from latemm.encoders.text import default_device, default_dtype
from latemm.encoders.vision import load_image, set_pixel_budget


@dataclass(frozen=True)
class PromptTemplate:
    """How a (query, page) pair becomes chat messages, and how logits become a score.

    ``user`` is formatted with ``{query}`` (and ``{instruction}``); the page (image and/or text)
    is placed where ``document_first`` says. ``answers`` are the positive and negative answer
    strings, each of which must be a single token. ``score`` is ``softmax`` (P(positive) over the
    two answers) or ``sigmoid`` (sigmoid(logit_pos - logit_neg); the same value, kept separate
    to name the published formula).
    """

    name: str
    user: str
    answers: tuple[str, str]
    system: str | None = None
    document_first: bool = True
    document_prefix: str = ""
    score: str = "softmax"
    instruction: str = "Given a search query, retrieve relevant candidates that answer the query."


TEMPLATES = {
    "monoqwen": PromptTemplate(
        name="monoqwen",
        user="Assert the relevance of the previous image document to the following query, answer True or False. The query is: {query}",
        answers=("True", "False"),
    ),
    "qwen3-vl-reranker": PromptTemplate(
        name="qwen3-vl-reranker",
        system='Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".',
        user="<Instruct>: {instruction}\n<Query>: {query}\n<Document>:",
        answers=("yes", "no"),
        document_first=False,
        score="sigmoid",
    ),
    "yesno": PromptTemplate(
        name="yesno",
        user="Does the document above answer the query? Answer yes or no.\nQuery: {query}",
        answers=("yes", "no"),
    ),
}


class MLLMReranker:
    """Scores (query, page) pairs with an image-text-to-text model.

    Parameters
    ----------
    name_or_path
        Hub id or local folder of the chat model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Idefics3 /
        SmolVLM, PaliGemma-style).
    template
        A name from ``TEMPLATES`` or a ``PromptTemplate``.
    adapter
        A LoRA adapter folder or hub id (peft), e.g. MonoQwen2-VL on top of Qwen2-VL.
    batch_size
        Pairs per forward pass.
    max_pixels
        Page resolution budget (Qwen-style image processors).
    cache
        SQLite file for scores; None disables caching.
    allow_files
        Folders under which page images that an index names by file path may be read (the
        ``--allow-files`` policy of ``latemm show``, ``latemm.data.io.read_image_file``); by default
        none: an index is untrusted data and must not make the reranker read arbitrary files.
    """

    def __init__(
        self,
        name_or_path: str,
        *,
        template: str | PromptTemplate = "monoqwen",
        adapter: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 4,
        max_pixels: int | None = None,
        cache: str | Path | None = None,
        allow_files: Sequence[str | Path] = (),
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if isinstance(template, str):
            if template not in TEMPLATES:
                raise InputError(
                    f"unknown rerank template {template!r}; choose from {sorted(TEMPLATES)} or pass a PromptTemplate"
                )
            template = TEMPLATES[template]
        self.template = template
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.model = AutoModelForImageTextToText.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code, dtype=self.dtype
        )
        if adapter is not None:
            peft = require("peft", "rerank")
            self.model = peft.PeftModel.from_pretrained(self.model, adapter)
        self.model = self.model.to(self.device).eval()  # type: ignore[arg-type]
        self.processor = AutoProcessor.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"  # the next-token logits sit at the last position
        set_pixel_budget(getattr(self.processor, "image_processor", None), None, max_pixels)
        self.answer_ids = tuple(self._single_token(a) for a in template.answers)
        self.batch_size = batch_size
        self.model_id = f"{name_or_path}@{revision or ''}+{adapter or ''}"
        self._cache = _ScoreCache(Path(cache)) if cache is not None else None
        # Page images an index names by path are read only under these folders
        # (latemm.data.io.read_image_file): an index must not make the reranker read any file.
        self.allow_files = tuple(Path(folder) for folder in allow_files)

    def _single_token(self, answer: str) -> int:
        ids = self.tokenizer.encode(answer, add_special_tokens=False)
        if len(ids) != 1:
            raise InputError(
                f"template {self.template.name!r}: the answer {answer!r} is {len(ids)} tokens {ids} for this "
                "tokenizer; the score reads one next-token logit, so each answer must be a single token"
            )
        return int(ids[0])

    def messages(self, query: Page | str, document: Page) -> tuple[list[dict[str, Any]], list[Any]]:
        """Chat messages for one pair, and the images they reference, in order."""
        t = self.template
        query_text = query.text if isinstance(query, Page) else query
        doc_items: list[dict[str, Any]] = []
        images: list[Any] = []
        if document.image is not None:
            doc_items.append({"type": "image"})
            images.append(load_image(document.image, "rerank document"))
        if document.text:
            doc_items.append({"type": "text", "text": t.document_prefix + document.text})
        if not doc_items:
            raise InputError("a rerank document needs an image or text")
        query_items: list[dict[str, Any]] = []
        if isinstance(query, Page) and query.image is not None:
            query_items.append({"type": "image"})
        prompt = {
            "type": "text",
            "text": t.user.format(query=query_text or "", instruction=t.instruction),
        }
        if t.document_first:
            content = doc_items + query_items + [prompt]
            if isinstance(query, Page) and query.image is not None:
                images.append(load_image(query.image, "rerank query"))
        else:
            content = query_items + [prompt] + doc_items
            if isinstance(query, Page) and query.image is not None:
                images.insert(0, load_image(query.image, "rerank query"))
        messages = []
        if t.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": t.system}]})
        messages.append({"role": "user", "content": content})
        return messages, images

    def _forward(self, pairs: list[tuple[Page | str, Page]]) -> np.ndarray:
        texts, images = [], []
        for query, document in pairs:
            messages, pair_images = self.messages(query, document)
            texts.append(
                self.processor.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            )
            images += pair_images
        inputs = self.processor(
            text=texts, images=images or None, padding=True, return_tensors="pt"
        )
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        with torch.inference_mode():
            logits = self.model(**inputs).logits[:, -1, :].float()  # (B, vocab)
        pair_logits = logits[:, list(self.answer_ids)]  # (B, 2)
        if self.template.score == "sigmoid":
            return torch.sigmoid(pair_logits[:, 0] - pair_logits[:, 1]).cpu().numpy()
        return torch.softmax(pair_logits, dim=1)[:, 0].cpu().numpy()

    def score(
        self, query: Page | str, documents: Sequence[Page], *, doc_keys: Sequence[str] | None = None
    ) -> np.ndarray:
        """Relevance in [0, 1] of each document to the query, (n,) float32."""
        keys = None
        scores = np.full(len(documents), np.nan, dtype=np.float32)
        if self._cache is not None:
            query_text = query.text if isinstance(query, Page) else query
            keys = [
                _key(
                    self.model_id,
                    self.template,
                    query_text or "",
                    doc_keys[i] if doc_keys else _content_key(d),
                )
                for i, d in enumerate(documents)
            ]
            cached = self._cache.get(keys)
            for i, k in enumerate(keys):
                if k in cached:
                    scores[i] = cached[k]
        todo = [i for i in range(len(documents)) if np.isnan(scores[i])]
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            scores[batch] = self._forward([(query, documents[i]) for i in batch])
        if self._cache is not None and keys is not None and todo:
            self._cache.put({keys[i]: float(scores[i]) for i in todo})
        return scores


def _content_key(document: Page) -> str:
    digest = hashlib.sha256()
    if document.image is not None and isinstance(document.image, (bytes, bytearray)):
        digest.update(bytes(document.image))
    digest.update((document.text or "").encode())
    return digest.hexdigest()


def _key(model: str, template: PromptTemplate, query: str, doc: str) -> str:
    return hashlib.sha256("\x1f".join([model, repr(template), query, doc]).encode()).hexdigest()


class _ScoreCache:
    """A SQLite table of rerank scores keyed by a hash of (model, template, query, document)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, score REAL)")

    def get(self, keys: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self.db.execute(
                f"SELECT key, score FROM scores WHERE key IN ({','.join('?' * len(chunk))})", chunk
            )
            out.update(dict(rows.fetchall()))
        return out

    def put(self, scores: dict[str, float]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?)", list(scores.items()))


def rerank_order(
    rerank: np.ndarray, maxsim: np.ndarray, *, fusion: str = "none", rrf_k: int = 60
) -> np.ndarray:
    """Order of the reranked candidates, best first.

    ``fusion="none"``: by rerank score, ties broken by MaxSim score. ``fusion="rrf"``: reciprocal
    rank fusion, ``1 / (rrf_k + rank_rerank) + 1 / (rrf_k + rank_maxsim)`` with 1-based ranks.
    """
    if fusion == "none":
        return np.lexsort((-maxsim, -rerank))
    if fusion == "rrf":
        rank_r = np.empty(rerank.size)
        rank_r[np.lexsort((-maxsim, -rerank))] = np.arange(1, rerank.size + 1)
        rank_m = np.empty(maxsim.size)
        rank_m[np.argsort(-maxsim, kind="stable")] = np.arange(1, maxsim.size + 1)
        fused = 1.0 / (rrf_k + rank_r) + 1.0 / (rrf_k + rank_m)
        return np.lexsort((-maxsim, -fused))
    raise InputError(f"fusion must be 'none' or 'rrf', got {fusion!r}")
