"""Late-interaction text encoders from any Hugging Face text model.

Covers plain encoders (the packaged all-MiniLM-L6-v2, any BERT-like model), sentence-transformers
folders (their Dense layers and normalisation are applied), and ColBERT checkpoints in the PyLate
layout (Dense projection, query/document prefixes, query augmentation with mask tokens) or the
Stanford layout (a ``linear`` layer beside the BERT weights). Text longer than the model's window
is encoded in overlapping windows and every token keeps one vector, taken from the window where
it sits most centrally. Only this module and its siblings import ``transformers``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index_store.errors import InputError
from latemm.encoders.base import Encoder, EncoderInfo, MultiVectors, Page


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU, float32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass(frozen=True)
class _Linear:
    weight: torch.Tensor  # (out, in)
    bias: torch.Tensor | None
    activation: str | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.linear(
            x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
        )
        if self.activation and self.activation.endswith("Tanh"):
            y = torch.tanh(y)
        return y


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return dict(json.load(fh))


def local_folder(name_or_path: str, revision: str | None) -> Path | None:
    """The local folder of a model: the path itself, or the hub snapshot (downloaded if needed)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, revision=revision))
    except Exception:  # noqa: BLE001 - offline or unknown id: transformers gives the real error
        return None


class TextEncoder(Encoder):
    """Token-level (or pooled) vectors from a Hugging Face text encoder.

    Parameters
    ----------
    name_or_path
        Hub id or local folder (a plain transformers model, a sentence-transformers folder, or a
        ColBERT checkpoint).
    revision, trust_remote_code
        Passed to ``from_pretrained``; remote code stays off unless asked for.
    device, dtype
        Defaults: CUDA if available, else CPU (always the CPU with ``quantize``); bf16 on GPU,
        float32 on CPU.
    pooling
        ``None`` keeps one vector per token (late interaction); ``"mean"`` or ``"cls"`` gives
        one vector per text, so dense baselines run through the same index.
    normalize
        L2-normalise every output vector (default: True).
    max_length
        Window length in tokens including special tokens (default: the model's limit). A
        document longer than one window is encoded window by window; a query is capped at one
        window (``max_query_tokens``): its later tokens are dropped, with a warning.
    window_overlap
        Tokens shared by consecutive windows for long texts (default: a quarter of the window,
        at most 64).
    batch_size
        Windows per forward pass.
    quantize
        ``"int8"``: torch dynamic int8 quantisation of the model's linear layers (weights int8,
        activations quantised on the fly), for faster encoding on the CPU at a small exactness
        cost (``experiments/bench_cpu_encode.py``). CPU and float32 only; recorded in the
        encoder's options, so queries of an index built with it are encoded the same way.
    """

    reads = ("text",)

    # Over 60 lines on purpose: one loading sequence (config, tokenizer, weights, ColBERT projection, device) whose steps share the options recorded in EncoderInfo.
    def __init__(
        self,
        name_or_path: str,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        pooling: str | None = None,
        normalize: bool = True,
        max_length: int | None = None,
        window_overlap: int | None = None,
        batch_size: int = 32,
        query_length: int | None = None,
        quantize: str | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if pooling not in (None, "mean", "cls"):
            raise InputError(f"pooling must be None, 'mean' or 'cls', got {pooling!r}")
        if device is None and quantize is not None:
            device = "cpu"  # int8 dynamic quantisation is a CPU path
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or default_dtype(self.device)
        _check_quantize(quantize, self.device, self.dtype, name_or_path)
        folder = local_folder(name_or_path, revision)
        st_modules = _read_json_list(folder / "modules.json") if folder else []
        transformer_dir = folder
        self.dense: list[_Linear] = []
        st_normalize = False
        for module in st_modules:
            kind = module.get("type", "")
            sub = folder / module.get("path", "") if folder else None
            if kind.endswith("models.Transformer") and sub is not None:
                transformer_dir = sub
            elif kind.endswith("Dense") and sub is not None:
                self.dense.append(_load_dense(sub))
            elif kind.endswith("Normalize"):
                st_normalize = True
        source = str(transformer_dir) if transformer_dir is not None else name_or_path
        self.tokenizer = AutoTokenizer.from_pretrained(
            source, revision=None if folder else revision, trust_remote_code=trust_remote_code
        )
        self.model = AutoModel.from_pretrained(
            source,
            revision=None if folder else revision,
            trust_remote_code=trust_remote_code,
            dtype=self.dtype,
        ).to(self.device)
        self.model.eval()
        if quantize == "int8":
            self.model = _quantize_int8(self.model)
        st_config = {}
        if folder is not None and (folder / "config_sentence_transformers.json").is_file():
            st_config = _read_json(folder / "config_sentence_transformers.json")
        # Stanford ColBERT checkpoints keep the projection as `linear.weight` next to BERT.
        if not self.dense and folder is not None and (folder / "model.safetensors").is_file():
            weights = _load_safetensors(folder / "model.safetensors")
            if "linear.weight" in weights:
                self.dense.append(_Linear(weights["linear.weight"].to(self.device), None, None))
        self.query_prefix: str = st_config.get("query_prefix") or ""
        self.document_prefix: str = st_config.get("document_prefix") or ""
        is_colbert = bool(self.query_prefix) or "linear.weight" in _safetensor_keys(folder)
        self.query_length = (
            query_length or st_config.get("query_length") or (32 if is_colbert else None)
        )
        self.augment_queries = bool(st_config.get("do_query_expansion", is_colbert))
        # ColBERT keeps every token's vector, [CLS], markers and [SEP] included.
        self.keep_special_tokens = is_colbert
        self.pooling = pooling
        self.normalize = normalize or st_normalize
        limit = _model_window(self.model, self.tokenizer, folder)
        self.max_length = min(max_length or limit, limit)
        self.batch_size = batch_size
        self.num_special = self.tokenizer.num_special_tokens_to_add(pair=False)
        if window_overlap is None:
            window_overlap = min(64, (self.max_length - self.num_special) // 4)
        self.window_overlap = window_overlap
        if self.max_length - self.num_special <= 2 * window_overlap:
            raise InputError(
                f"window_overlap={window_overlap} is too large for windows of {self.max_length} "
                "tokens; use at most a third of the window"
            )
        dim = self.dense[-1].weight.shape[0] if self.dense else int(self.model.config.hidden_size)
        self.info = EncoderInfo(
            family="text",
            name_or_path=str(name_or_path),
            dim=int(dim),
            revision=revision,
            query_template=self.query_prefix + "{query}" if self.query_prefix else None,
            document_template=self.document_prefix + "{text}" if self.document_prefix else None,
            options={
                "pooling": pooling,
                "normalize": self.normalize,
                "max_length": self.max_length,
                "window_overlap": window_overlap,
                "query_length": self.query_length,
                # Only when set: records of float32 encoders stay as older latemm wrote them.
                **({"quantize": quantize} if quantize else {}),
            },
        )

    # ----------------------------------------------------------------------------------------
    def encode_documents(
        self,
        documents: Sequence[Page | str],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> MultiVectors:
        texts = [_text_of(d, i, "document") for i, d in enumerate(documents)]
        return self._encode(
            [self.document_prefix + t for t in texts], batch_size, progress, augment=False
        )

    def encode_queries(
        self,
        queries: Sequence[Page | str],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> MultiVectors:
        texts = [_text_of(q, i, "query") for i, q in enumerate(queries)]
        return self._encode(
            [self.query_prefix + t for t in texts],
            batch_size,
            progress,
            augment=self.augment_queries,
            query=True,
        )

    @property
    def max_query_tokens(self) -> int:
        """Tokens of a query that are encoded (special tokens included); longer queries are
        truncated to them, with a warning: ColBERT's ``query_length``, else one window."""
        if self.augment_queries and self.query_length:
            return int(self.query_length)
        return int(self.max_length)

    # ----------------------------------------------------------------------------------------
    def _encode(
        self,
        texts: list[str],
        batch_size: int | None,
        progress: bool,
        *,
        augment: bool,
        query: bool = False,
    ) -> MultiVectors:
        windows = self._windows(texts, augment=augment, query=query)
        order = sorted(range(len(windows)), key=lambda w: len(windows[w].ids))
        per_text: list[list[tuple[int, torch.Tensor]]] = [[] for _ in texts]
        size = batch_size or self.batch_size
        batches = [order[b : b + size] for b in range(0, len(order), size)]
        iterator: Any = batches
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc="encoding", unit="batch")
        pad_id = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for batch in iterator:
                longest = max(len(windows[w].ids) for w in batch)
                input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), longest), dtype=torch.long)
                for row, w in enumerate(batch):
                    input_ids[row, : len(windows[w].ids)] = torch.tensor(windows[w].ids)
                    attention[row, : len(windows[w].ids)] = 1
                hidden = self.model(
                    input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)
                ).last_hidden_state  # (B, L, h)
                for row, w in enumerate(batch):
                    window = windows[w]
                    if self.pooling == "mean":
                        vectors = hidden[row, : len(window.ids)].float().mean(dim=0, keepdim=True)
                    elif self.pooling == "cls":
                        vectors = hidden[row, :1].float()
                    else:
                        vectors = hidden[row, window.keep].float()  # (kept, h)
                    per_text[window.text].append((window.start, vectors))
        arrays = []
        for parts in per_text:
            parts.sort(key=lambda p: p[0])
            if self.pooling is not None:
                # Long texts: the mean of their windows' pooled vectors.
                vectors = torch.cat([p[1] for p in parts]).mean(dim=0, keepdim=True)
            else:
                vectors = _stitch(parts, self.window_overlap)
            for layer in self.dense:
                vectors = layer(vectors)
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            arrays.append(vectors.cpu().numpy().astype(np.float32))
        return MultiVectors.from_arrays(arrays, self.dim)

    def _windows(self, texts: list[str], *, augment: bool, query: bool = False) -> list[_Window]:
        """Tokenise into model windows; long texts overflow into windows sharing
        ``window_overlap`` tokens, except queries (``query``), which keep their first window
        (a warning names those truncated). Each window lists the positions whose vectors are
        kept."""
        mask_id = self.tokenizer.mask_token_id
        if augment and self.query_length:
            # ColBERT query augmentation: pad to query_length and turn the padding into [MASK].
            encoded = self.tokenizer(
                texts,
                padding="max_length",
                truncation=True,
                max_length=self.query_length,
                return_special_tokens_mask=True,
            )
            out = []
            for i in range(len(texts)):
                ids = list(encoded["input_ids"][i])
                real = encoded["attention_mask"][i]
                special = encoded["special_tokens_mask"][i]
                ids = [t if m else mask_id for t, m in zip(ids, real, strict=True)]
                keep = [
                    j
                    for j in range(len(ids))
                    if self.keep_special_tokens or not special[j] or not real[j]
                ]
                out.append(_Window(i, 0, ids, keep))
            self._check_tokens(texts, out)
            return out
        encoded = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            stride=self.window_overlap,
            return_overflowing_tokens=True,
            return_special_tokens_mask=True,
        )
        mapping = encoded["overflow_to_sample_mapping"]
        seen: dict[int, int] = {}
        out = []
        for w, text in enumerate(mapping):
            n = seen.get(text, 0)
            seen[text] = n + 1
            special = encoded["special_tokens_mask"][w]
            keep = [j for j, s in enumerate(special) if self.keep_special_tokens or not s]
            out.append(_Window(int(text), n, list(encoded["input_ids"][w]), keep))
        if query:
            _warn_truncated([t for t, n in sorted(seen.items()) if n > 1], self.max_length)
            out = [window for window in out if window.start == 0]
            seen = dict.fromkeys(seen, 1)
        if self.keep_special_tokens:
            # Stitching windows needs content tokens only: texts longer than one window drop
            # the [CLS]/[SEP] of their windows.
            for i, window in enumerate(out):
                if seen[window.text] > 1:
                    special = encoded["special_tokens_mask"][i]
                    out[i] = _Window(
                        window.text,
                        window.start,
                        window.ids,
                        [j for j, s in enumerate(special) if not s],
                    )
        self._check_tokens(texts, out)
        return out

    @staticmethod
    def _check_tokens(texts: list[str], windows: list[_Window]) -> None:
        kept = np.zeros(len(texts), dtype=np.int64)
        for window in windows:
            kept[window.text] += len(window.keep)
        empty = np.flatnonzero(kept == 0)
        if empty.size:
            raise InputError(
                f"text {int(empty[0])} has no tokens after tokenisation ({texts[int(empty[0])]!r});"
                " remove or fill it",
                item=int(empty[0]),
            )


QUANTIZE_CHOICES = ("int8",)


def _check_quantize(
    quantize: str | None, device: torch.device, dtype: torch.dtype, name: str
) -> None:
    """Dynamic int8 quantisation runs on the CPU in float32 only; anything else is refused."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_CHOICES:
        raise InputError(
            f"quantize={quantize!r} for {name}: the only choice is 'int8' (or leave it out)"
        )
    if device.type != "cpu":
        raise InputError(
            f"quantize='int8' encodes on the CPU only (device {device} given for {name}); on a "
            "GPU leave it out (bf16 is the fast path there) or use --device cpu"
        )
    if dtype != torch.float32:
        raise InputError(
            f"quantize='int8' quantises a float32 model ({dtype} given for {name}); leave "
            "--model-dtype at auto or float32"
        )


def _quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every ``nn.Linear`` replaced by a dynamically quantised int8 one.

    Weights are quantised per output channel: on MiniLM that keeps the token vectors at a mean
    cosine of 0.96 to the float32 ones, against 0.92 with one scale per tensor (200 Vaswani
    abstracts), at the same speed."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        # torch marks its eager-mode quantisation deprecated (in favour of torchao) but ships
        # and runs it; the warnings would print on every load.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        quantized: torch.nn.Module = quantize_dynamic(
            model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
        )
    return quantized


def _warn_truncated(queries: list[int], limit: int) -> None:
    if queries:
        shown = ", ".join(map(str, queries[:5])) + (" ..." if len(queries) > 5 else "")
        warnings.warn(
            f"{len(queries)} query text(s) (number {shown} of the batch) are longer than "
            f"{limit} tokens, the encoder's maximum query length (one window); only their "
            "first tokens are encoded",
            stacklevel=5,
        )


@dataclass(frozen=True)
class _Window:
    text: int  # index of the text it came from
    start: int  # window number within that text
    ids: list[int]  # token ids with special tokens
    keep: list[int]  # positions whose vectors are kept


def _stitch(parts: list[tuple[int, torch.Tensor]], overlap: int) -> torch.Tensor:
    """One vector per token from windows that share ``overlap`` tokens: each shared token comes
    from the window where it is farther from an edge (half the overlap to each side)."""
    if len(parts) == 1:
        return parts[0][1]
    half = overlap // 2
    pieces = []
    for n, (_, vectors) in enumerate(parts):
        lo = 0 if n == 0 else overlap - half
        hi = vectors.shape[0] if n == len(parts) - 1 else vectors.shape[0] - half
        pieces.append(vectors[lo:hi])
    return torch.cat(pieces)


def _text_of(item: Page | str, index: int, kind: str) -> str:
    text = item.text if isinstance(item, Page) else item
    if not isinstance(text, str):
        raise InputError(
            f"{kind} {index} has no text (got {type(text).__name__}); a text encoder needs text",
            item=index,
        )
    if not text.strip():
        raise InputError(f"{kind} {index} is empty text; drop it or give it content", item=index)
    return text


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return list(json.load(fh))


def _safetensor_keys(folder: Path | None) -> set[str]:
    if folder is None or not (folder / "model.safetensors").is_file():
        return set()
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        return set(fh.keys())


def _load_dense(folder: Path) -> _Linear:
    """A sentence-transformers Dense module: config.json plus safetensors weights."""
    config = _read_json(folder / "config.json")
    path = folder / "model.safetensors"
    if not path.is_file():
        raise InputError(
            f"{folder} has no model.safetensors; latemm never unpickles weights "
            "(convert pytorch_model.bin to safetensors)"
        )
    weights = _load_safetensors(path)
    weight = weights.get("linear.weight")
    if weight is None:
        raise InputError(f"{path} has no 'linear.weight' tensor (found {sorted(weights)})")
    return _Linear(weight, weights.get("linear.bias"), config.get("activation_function"))


def _model_window(model: Any, tokenizer: Any, folder: Path | None) -> int:
    limit = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    if folder is not None and (folder / "sentence_bert_config.json").is_file():
        limit = min(
            limit,
            int(_read_json(folder / "sentence_bert_config.json").get("max_seq_length", limit)),
        )
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < limit:
        limit = model_max
    return limit
