"""Visual-document retrieval models native to transformers: ColPali (PaliGemma), ColQwen2
(Qwen2-VL and Qwen2.5-VL backbones) and ColModernVBert.

Pages are images; queries are text. The model's own processor builds the inputs (query prefix
and augmentation tokens, the visual prompt, the image resolution), the model's projection and
normalisation give the vectors, and the attention mask removes padding (and, on request,
everything but the image-patch tokens of a page). Only the encoder modules import transformers.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from index_store.errors import InputError
from latemm.encoders.base import Encoder, EncoderInfo, MultiVectors, Page
from latemm.encoders.text import default_device, default_dtype, local_folder

MODEL_CLASSES = {
    "colpali": "ColPaliForRetrieval",
    "colqwen2": "ColQwen2ForRetrieval",
    "colmodernvbert": "ColModernVBertForRetrieval",
}


def load_image(
    value: Any, where: str, *, max_image_pixels: int | None = None, item: int | None = None
) -> Any:
    """A PIL RGB image from a PIL image or encoded bytes; clear errors (tagged with ``item``)
    for the rest."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, (bytes, bytearray)):
        if not value:
            raise InputError(f"{where}: the image is empty (0 bytes)", item=item)
        try:
            image = Image.open(io.BytesIO(value))
            image.load()
        except Image.DecompressionBombError as exc:
            raise InputError(
                f"{where}: the image is too large to decode safely ({exc}); downscale it "
                "(latemm ingest --max-pixels)",
                item=item,
            ) from exc
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(
                f"{where}: the image cannot be decoded ({exc}); expected PNG or JPEG bytes",
                item=item,
            ) from exc
    else:
        raise InputError(
            f"{where}: expected an image (PIL image or PNG/JPEG bytes), got {type(value).__name__}",
            item=item,
        )
    if image.width == 0 or image.height == 0:
        raise InputError(
            f"{where}: the image has no pixels ({image.width}x{image.height})", item=item
        )
    if max_image_pixels is not None and image.width * image.height > max_image_pixels:
        raise InputError(
            f"{where}: the image is {image.width}x{image.height} pixels, over the configured budget "
            f"of {max_image_pixels}; downscale it (latemm ingest --max-pixels) or raise the budget",
            item=item,
        )
    return image.convert("RGB")


def load_vision_language(
    name_or_path: str,
    *,
    revision: str | None,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    trust_remote_code: bool,
    min_pixels: int | None,
    max_pixels: int | None,
) -> tuple[Any, Any, Any, torch.device, torch.dtype]:
    """A vision-language checkpoint through ``AutoModel`` and ``AutoProcessor`` on ``device``
    (default: CUDA when present) in ``dtype`` (default: bf16 on a GPU, float32 on the CPU), in
    eval mode, with the pixel budget set: (folder, model, processor, device, dtype)."""
    from transformers import AutoModel, AutoProcessor

    folder = local_folder(name_or_path, revision)
    if folder is None:
        raise InputError(
            f"cannot find {name_or_path!r}: not a local folder, and the hub is unreachable"
        )
    on = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(on)
    model = AutoModel.from_pretrained(folder, trust_remote_code=trust_remote_code, dtype=dtype)
    model = model.to(on).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
    set_pixel_budget(getattr(processor, "image_processor", None), min_pixels, max_pixels)
    return folder, model, processor, on, dtype


def set_pixel_budget(image_processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
    """Bound the pixels per image of a Qwen-style image processor (its number of visual tokens
    follows); a no-op for processors with a fixed size. transformers 5 reads the bounds from
    ``size`` (``shortest_edge`` / ``longest_edge``); a ``min_pixels`` / ``max_pixels``
    attribute would be passed to every call as the deprecated keyword instead."""
    if image_processor is None or not (min_pixels or max_pixels):
        return
    size = dict(getattr(image_processor, "size", {}) or {})
    if min_pixels:
        size["shortest_edge"] = min_pixels
    if max_pixels:
        size["longest_edge"] = max_pixels
    image_processor.size = size


class PageImageEncoder(Encoder):
    """What the page-image encoders share: pages are validated and sorted by area into batches,
    queries are validated text, and the attention mask (optionally narrowed to image-patch
    tokens) removes padding. Subclasses say how a batch becomes model inputs (``_image_inputs``,
    ``_query_inputs``) and how inputs become (B, L, dim) vectors (``_forward``)."""

    reads = ("image",)
    device: torch.device
    batch_size: int
    max_image_pixels: int | None
    image_patches_only: bool
    image_token_id: int | None

    def _image_inputs(self, images: list[Any]) -> Any:
        raise NotImplementedError

    def _query_inputs(self, texts: list[str]) -> Any:
        raise NotImplementedError

    def _forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        """(B, L, dim) float32 vectors for device-resident inputs."""
        raise NotImplementedError

    def _embed(self, inputs: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        with torch.inference_mode():
            return self._forward(inputs), inputs

    def _vectors(
        self, embeddings: torch.Tensor, inputs: dict[str, Any], *, documents: bool
    ) -> list[np.ndarray]:
        mask = inputs["attention_mask"].bool()  # (B, L): padding never becomes a vector
        if documents and self.image_patches_only and self.image_token_id is not None:
            mask &= inputs["input_ids"] == self.image_token_id
        return [embeddings[b][mask[b]].cpu().numpy() for b in range(embeddings.shape[0])]

    def encode_documents(
        self,
        documents: Sequence[Page | str],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> MultiVectors:
        images = []
        for i, doc in enumerate(documents):
            value = doc.image if isinstance(doc, Page) else doc
            if value is None:
                raise InputError(
                    f"document {i} has no image; {self.info.family} encodes page images", item=i
                )
            images.append(
                load_image(value, f"document {i}", max_image_pixels=self.max_image_pixels, item=i)
            )
        order = sorted(range(len(images)), key=lambda i: images[i].width * images[i].height)
        size = batch_size or self.batch_size
        out: list[np.ndarray] = [np.empty((0, self.dim), np.float32)] * len(images)
        batches = [order[b : b + size] for b in range(0, len(order), size)]
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encoding pages", unit="batch")
        for batch in batches:
            embeddings, inputs = self._embed(self._image_inputs([images[i] for i in batch]))
            for i, vectors in zip(
                batch, self._vectors(embeddings, inputs, documents=True), strict=True
            ):
                out[i] = vectors
        return MultiVectors.from_arrays(out, self.dim)

    def encode_queries(
        self,
        queries: Sequence[Page | str],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> MultiVectors:
        texts = []
        for i, query in enumerate(queries):
            text = query.text if isinstance(query, Page) else query
            if not isinstance(text, str) or not text.strip():
                raise InputError(
                    f"query {i} has no text; {self.info.family} queries are text", item=i
                )
            texts.append(text)
        size = batch_size or self.batch_size
        arrays: list[np.ndarray] = []
        for start in range(0, len(texts), size):
            embeddings, inputs = self._embed(self._query_inputs(texts[start : start + size]))
            arrays += self._vectors(embeddings, inputs, documents=False)
        return MultiVectors.from_arrays(arrays, self.dim)


class ColVisionEncoder(PageImageEncoder):
    """ColPali / ColQwen2 / ColModernVBert through their transformers classes.

    Parameters
    ----------
    name_or_path
        Hub id or local folder of a retrieval checkpoint (``model_type`` colpali, colqwen2 or
        colmodernvbert).
    revision, trust_remote_code
        Passed to ``from_pretrained``; remote code stays off unless asked for.
    device, dtype
        Defaults: CUDA if available else CPU; bf16 on GPU, float32 on CPU.
    batch_size
        Pages or queries per forward pass (pages are sorted by area to cut padding).
    min_pixels, max_pixels
        Qwen2-VL resolution budget per page (the number of visual tokens follows from it).
    max_image_pixels
        Refuse input images larger than this (a clear error instead of an out-of-memory).
    image_patches_only
        Keep only image-patch vectors for documents (drop the prompt's text tokens).
    """

    def __init__(
        self,
        name_or_path: str,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 4,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_image_pixels: int | None = 50_000_000,
        image_patches_only: bool = False,
    ) -> None:
        import transformers
        from transformers import AutoConfig, AutoProcessor

        config = AutoConfig.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
        if config.model_type not in MODEL_CLASSES:
            raise InputError(
                f"{name_or_path} is a {config.model_type!r} model; ColVisionEncoder takes "
                f"{sorted(MODEL_CLASSES)} (use TextEncoder for text models)"
            )
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or default_dtype(self.device)
        model_class = getattr(transformers, MODEL_CLASSES[config.model_type])
        self.model = model_class.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code, dtype=self.dtype
        ).to(self.device)
        self.model.eval()
        self.processor = AutoProcessor.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
        set_pixel_budget(getattr(self.processor, "image_processor", None), min_pixels, max_pixels)
        self.batch_size = batch_size
        self.max_image_pixels = max_image_pixels
        self.image_patches_only = image_patches_only
        self.image_token_id = getattr(self.processor, "image_token_id", None)
        self.info = EncoderInfo(
            family=config.model_type,
            name_or_path=str(name_or_path),
            dim=int(self.model.config.embedding_dim),
            revision=revision,
            query_template=getattr(self.processor, "query_prefix", None),
            document_template=getattr(self.processor, "visual_prompt_prefix", None),
            options={
                "min_pixels": min_pixels,
                "max_pixels": max_pixels,
                "image_patches_only": image_patches_only,
            },
        )

    def _image_inputs(self, images: list[Any]) -> Any:
        return self.processor.process_images(images=images, return_tensors="pt")

    def _query_inputs(self, texts: list[str]) -> Any:
        return self.processor.process_queries(text=texts, return_tensors="pt")

    def _forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        return self.model(**inputs).embeddings.float()  # (B, L, dim)

    def similarity_maps(self, query: str | Page, images: Sequence[Any]) -> list[np.ndarray]:
        """Patch-level heat maps of a query over page images.

        For each image, an (h, w) float32 grid over its image patches: each patch's best inner
        product with any of the query's token vectors, i.e. how strongly some query token would
        pick that patch in MaxSim. Available for ColPali (a square patch grid) and ColQwen2 (the
        grid of merged patches the processor reports); ColModernVBert splits pages into tiles
        and has no single grid.
        """
        if self.image_token_id is None or self.info.family not in ("colpali", "colqwen2"):
            raise InputError(
                f"similarity maps are available for colpali and colqwen2 encoders, not "
                f"{self.info.family} (its image tokens do not form one patch grid)"
            )
        query_vectors = self.encode_queries([query])[0]  # (Tq, d)
        maps = []
        for i, value in enumerate(images):
            image = load_image(value, f"page {i}", max_image_pixels=self.max_image_pixels)
            embeddings, inputs = self._embed(self._image_inputs([image]))
            patches = embeddings[0][inputs["input_ids"][0] == self.image_token_id].cpu().numpy()
            height, width = self._patch_grid(inputs, len(patches))
            best = (patches @ query_vectors.T).max(axis=1)  # (P,)
            maps.append(best.reshape(height, width).astype(np.float32))
        return maps

    def _patch_grid(self, inputs: dict[str, Any], n_patches: int) -> tuple[int, int]:
        """(rows, columns) of the image-patch tokens of one processed image."""
        if "image_grid_thw" in inputs:  # Qwen2-VL: patches merged merge_size x merge_size
            merge = int(getattr(self.processor.image_processor, "merge_size", 2))
            _, rows, columns = (int(v) for v in inputs["image_grid_thw"][0])
            grid = (rows // merge, columns // merge)
        else:  # PaliGemma: a square grid
            side = int(round(n_patches**0.5))
            grid = (side, side)
        if grid[0] * grid[1] != n_patches:
            raise InputError(
                f"{n_patches} image tokens do not form the expected {grid[0]}x{grid[1]} patch grid"
            )
        return grid
