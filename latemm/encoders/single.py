"""Single-vector embeddings from a Hugging Face vision-language model (DSE, Qwen3-VL-Embedding).

Any backbone that transformers loads natively with ``AutoModel`` (Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, Idefics3, SmolVLM, ...) reads a text, an image or both through its own processor and
chat template; the last hidden state of the last non-pad token (or the mean over the non-pad
tokens) is the item's one vector, truncated to ``dim`` (Matryoshka) and then L2-normalised.
The result is a ``MultiVectors`` with sets of size one, so single-vector models run through the
same index, search and evaluation as late-interaction ones. Only the encoder modules import
transformers.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from index_store.errors import InputError
from latemm.encoders.base import Encoder, EncoderInfo, MultiVectors, Page
from latemm.encoders.vision import load_image, load_vision_language

POOLINGS = ("last", "mean")


@dataclass(frozen=True)
class PromptStyle:
    """How a family lays out its inputs in the chat template.

    ``placement`` ``"system"`` puts the instruction in a system turn (Qwen3-VL-Embedding);
    ``"prefix"`` puts it before the text in the user turn (DSE's ``Query: ...``).
    ``image_prompt`` is the user text beside an image that comes without text; ``suffix`` is
    appended to the rendered template; ``punctuate`` ends an instruction with a full stop.
    """

    placement: str
    query_instruction: str | None
    document_instruction: str | None
    image_prompt: str | None = None
    generation_prompt: bool = False
    suffix: str = ""
    punctuate: bool = False


# Documented formats: DSE (texttron/tevatron examples/dse/qwen, MrLight/dse-qwen2-2b-mrl-v1:
# no generation prompt, "<|endoftext|>" appended, last token) and Qwen3-VL-Embedding
# (QwenLM/Qwen3-VL-Embedding: instruction as system turn, default "Represent the user's input.",
# generation prompt, last non-pad token). "plain" is the chat template alone.
STYLES = {
    "dse": PromptStyle(
        placement="prefix",
        query_instruction="Query:",
        document_instruction="Document:",
        image_prompt="What is shown in this image?",
        suffix="<|endoftext|>",
    ),
    "qwen3-vl-embedding": PromptStyle(
        placement="system",
        query_instruction="Retrieve images or text relevant to the user's query.",
        document_instruction="Represent the user's input.",
        generation_prompt=True,
        punctuate=True,
    ),
    "plain": PromptStyle(placement="system", query_instruction=None, document_instruction=None),
}

# The style a backbone gets when none is named: DSE and its descendants are Qwen2-VL models,
# Qwen3-VL-Embedding is the Qwen3-VL one.
DEFAULT_STYLES = {
    "qwen2_vl": "dse",
    "qwen2_5_vl": "dse",
    "qwen3_vl": "qwen3-vl-embedding",
}


@dataclass(frozen=True)
class _Item:
    text: str | None
    image: Any  # PIL image or None


class SingleVectorEncoder(Encoder):
    """One vector per query or document from a vision-language model's hidden states.

    Parameters
    ----------
    name_or_path
        Hub id or local folder of the model (config, processor with a chat template, weights).
    style
        Prompt layout: ``"dse"``, ``"qwen3-vl-embedding"`` or ``"plain"`` (default: chosen from
        the model type, ``DEFAULT_STYLES``, else ``"plain"``).
    instruction
        Task instruction for queries (default: the style's; ``""`` for none).
    document_instruction
        Instruction for documents (default: the style's; ``""`` for none).
    pooling
        ``"last"``: the last non-pad token (left or right padding alike); ``"mean"``: the mean
        over non-pad tokens.
    dim
        Matryoshka dimension: keep the first ``dim`` components, then L2-normalise (default:
        the hidden size).
    min_pixels, max_pixels
        Qwen-style resolution budget per image.
    padding_side
        ``"left"`` or ``"right"`` for batches (default: the tokenizer's); results do not depend
        on it.
    revision, trust_remote_code, device, dtype, batch_size, max_image_pixels
        As for ``ColVisionEncoder``; remote code stays off unless asked for.
    """

    # Over 60 lines on purpose: one loading sequence (config, processor, weights, prompt style, device) whose steps share the options recorded in EncoderInfo.
    def __init__(
        self,
        name_or_path: str,
        *,
        style: str | None = None,
        instruction: str | None = None,
        document_instruction: str | None = None,
        pooling: str = "last",
        dim: int | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        padding_side: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
        max_image_pixels: int | None = 50_000_000,
    ) -> None:
        if pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if padding_side not in (None, "left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        _, self.model, self.processor, self.device, self.dtype = load_vision_language(
            name_or_path,
            revision=revision,
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
        )
        if padding_side is not None:
            self.processor.tokenizer.padding_side = padding_side
        if getattr(self.processor, "chat_template", None) is None:
            raise InputError(
                f"{name_or_path} has no chat template; this encoder builds prompts with it"
            )
        model_type = str(getattr(self.model.config, "model_type", ""))
        style = style or DEFAULT_STYLES.get(model_type, "plain")
        if style not in STYLES:
            raise InputError(f"style must be one of {sorted(STYLES)}, got {style!r}")
        self.style = STYLES[style]
        self.instruction = self.style.query_instruction if instruction is None else instruction
        self.document_instruction = (
            self.style.document_instruction
            if document_instruction is None
            else document_instruction
        )
        hidden = int(self.model.get_input_embeddings().weight.shape[1])
        if dim is not None and not 0 < dim <= hidden:
            raise InputError(f"dim must be between 1 and the hidden size {hidden}, got {dim}")
        self.pooling = pooling
        self.truncate_to = dim
        self.batch_size = batch_size
        self.max_image_pixels = max_image_pixels
        self.info = EncoderInfo(
            family="vlm-single",
            name_or_path=str(name_or_path),
            dim=dim or hidden,
            revision=revision,
            query_template=self.instruction or None,
            document_template=self.document_instruction or None,
            options={
                "style": style,
                "instruction": instruction,
                "document_instruction": document_instruction,
                "pooling": pooling,
                "dim": dim,
                "min_pixels": min_pixels,
                "max_pixels": max_pixels,
            },
        )

    # ----------------------------------------------------------------------------------------
    def encode_queries(
        self,
        queries: Sequence[Page | str],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> MultiVectors:
        items = [self._item(q, i, "query") for i, q in enumerate(queries)]
        return self._encode(items, self.instruction, batch_size, progress)

    def encode_documents(
        self,
        documents: Sequence[Page | str],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> MultiVectors:
        items = [self._item(d, i, "document") for i, d in enumerate(documents)]
        return self._encode(items, self.document_instruction, batch_size, progress)

    def prompt(self, text: str | None, *, image: bool, instruction: str | None) -> str:
        """The rendered chat template for one item (the image stands as its placeholder)."""
        style = self.style
        if instruction and style.punctuate and not unicodedata.category(instruction[-1])[0] == "P":
            instruction += "."
        body = text if text is not None else (style.image_prompt if image else None)
        if style.placement == "prefix" and instruction and text is not None:
            body = f"{instruction} {text}"
        content: list[dict[str, str]] = [{"type": "image"}] if image else []
        if body:
            content.append({"type": "text", "text": body})
        messages: list[dict[str, Any]] = []
        if style.placement == "system" and instruction:
            messages.append({"role": "system", "content": [{"type": "text", "text": instruction}]})
        messages.append({"role": "user", "content": content})
        rendered = self.processor.apply_chat_template(
            messages, add_generation_prompt=style.generation_prompt, tokenize=False
        )
        return str(rendered) + style.suffix

    # ----------------------------------------------------------------------------------------
    def _item(self, value: Page | str, index: int, kind: str) -> _Item:
        text, image = (value.text, value.image) if isinstance(value, Page) else (value, None)
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise InputError(
                f"{kind} {index} has empty text; drop it or give it content", item=index
            )
        if text is None and image is None:
            raise InputError(f"{kind} {index} has neither text nor an image", item=index)
        if image is not None:
            image = load_image(
                image, f"{kind} {index}", max_image_pixels=self.max_image_pixels, item=index
            )
        return _Item(text, image)

    def _encode(
        self,
        items: list[_Item],
        instruction: str | None,
        batch_size: int | None,
        progress: bool,
    ) -> MultiVectors:
        # Batches hold items of one kind (with or without an image: processors want one or the
        # other), sorted by size to cut padding; results go back to input order.
        def size(i: int) -> tuple[int, int]:
            image = items[i].image
            area = image.width * image.height if image is not None else 0
            return area, len(items[i].text or "")

        size_of = batch_size or self.batch_size
        batches = []
        for with_image in (False, True):
            group = sorted(
                (i for i in range(len(items)) if (items[i].image is not None) == with_image),
                key=size,
            )
            batches += [group[b : b + size_of] for b in range(0, len(group), size_of)]
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encoding", unit="batch")
        out = np.zeros((len(items), self.dim), np.float32)
        for batch in batches:
            out[batch] = self._embed([items[i] for i in batch], instruction)
        return MultiVectors(out, np.arange(len(items) + 1, dtype=np.int64))

    def _embed(self, items: list[_Item], instruction: str | None) -> np.ndarray:
        """(B, dim) float32 unit vectors for one batch."""
        texts = [
            self.prompt(it.text, image=it.image is not None, instruction=instruction)
            for it in items
        ]
        images = [[it.image] for it in items] if items[0].image is not None else None
        inputs = self.processor(text=texts, images=images, return_tensors="pt", padding="longest")
        inputs = {k: _to(v, self.device, self.dtype) for k, v in inputs.items()}
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state.float()  # (B, L, h)
        pooled = pool(hidden, inputs["attention_mask"], self.pooling)  # (B, h)
        if self.truncate_to is not None:
            pooled = pooled[:, : self.truncate_to]  # (B, dim): Matryoshka, before normalising
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, h) from (B, L, h) hidden states and a (B, L) mask, left or right padded.

    ``last`` takes the last position whose mask is 1 in each row; ``mean`` averages the
    positions whose mask is 1.
    """
    mask = attention_mask.bool()  # (B, L)
    if pooling == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, L)
    last = torch.where(mask, positions, -1).max(dim=1).values  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _to(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A processor output on the model's device; pixel values in the model's dtype."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        return value.to(device, dtype)
    return value.to(device)
