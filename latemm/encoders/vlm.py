"""Late interaction from any Hugging Face vision-language model plus a linear projection.

This is how ColIdefics3 / ColSmol-style checkpoints are built: the VLM's backbone
(``AutoModel``: Idefics3, SmolVLM, Qwen2-VL, ...) gives one hidden state per token, a linear
layer stored in the same checkpoint (``linear.weight``, or ``custom_text_proj.weight`` as
ColPali names it) projects it to the retrieval dimension, and the result is L2-normalised.
Inputs go through the model's own processor and chat template: a page is the user turn
``[document_prompt, image]``, a query the user turn ``query_prefix + query + augmentation``.
Only the encoder modules import transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from index_store.errors import InputError
from latemm.encoders.base import EncoderInfo
from latemm.encoders.vision import PageImageEncoder, load_vision_language

PROJECTION_KEYS = ("linear", "custom_text_proj", "embedding_proj_layer")


def find_projection(
    folder: Path, key: str | None = None
) -> tuple[str, torch.Tensor, torch.Tensor | None]:
    """The checkpoint's projection layer: (key, weight (dim, hidden), bias or None).

    Looks for ``{key}.weight`` in every ``*.safetensors`` file of the folder (any of
    ``PROJECTION_KEYS`` when no key is given); never unpickles.
    """
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(
            f"{folder} has no .safetensors files; latemm reads projections from safetensors only"
        )
    wanted = [key] if key else list(PROJECTION_KEYS)
    seen: list[str] = []
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            names = set(fh.keys())
            seen += sorted(n for n in names if n.endswith(".weight") and n.count(".") == 1)
            for name in wanted:
                if f"{name}.weight" in names:
                    bias = fh.get_tensor(f"{name}.bias") if f"{name}.bias" in names else None
                    return name, fh.get_tensor(f"{name}.weight"), bias
    raise InputError(
        f"{folder}: no projection layer ({', '.join(f'{n}.weight' for n in wanted)}) in its "
        f"safetensors files; top-level weights found: {', '.join(seen) or 'none'}. "
        "Name it with projection_key="
    )


class VLMProjectionEncoder(PageImageEncoder):
    """Any vision-language model with a linear projection, ColIdefics3-style.

    Parameters
    ----------
    name_or_path
        Hub id or local folder holding the VLM (its config, processor and weights) and the
        projection weights.
    projection_key
        Name of the projection layer in the safetensors files (default: the first of
        ``PROJECTION_KEYS`` found).
    document_prompt
        The text beside each page image in the user turn.
    query_prefix, query_augmentation_token, query_augmentation
        A query's user turn is ``query_prefix + query + token * query_augmentation`` (the token
        defaults to the tokenizer's pad token).
    revision, trust_remote_code, device, dtype, batch_size, min_pixels, max_pixels,
    max_image_pixels, image_patches_only
        As for ``ColVisionEncoder``.
    """

    # Over 60 lines on purpose: one loading sequence (config, processor, backbone, projection, device) whose steps share the options recorded in EncoderInfo.
    def __init__(
        self,
        name_or_path: str,
        *,
        projection_key: str | None = None,
        document_prompt: str = "Describe the image.",
        query_prefix: str = "Query: ",
        query_augmentation_token: str | None = None,
        query_augmentation: int = 10,
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
        folder, self.model, self.processor, self.device, self.dtype = load_vision_language(
            name_or_path,
            revision=revision,
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
        )
        tokenizer = self.processor.tokenizer
        if getattr(tokenizer, "chat_template", None) is None and not getattr(
            self.processor, "chat_template", None
        ):
            raise InputError(
                f"{name_or_path} has no chat template; this encoder builds prompts with it"
            )
        key, weight, bias = find_projection(folder, projection_key)
        self.weight = weight.to(self.device, torch.float32)  # (dim, hidden)
        self.bias = None if bias is None else bias.to(self.device, torch.float32)
        self.document_prompt = document_prompt
        self.query_prefix = query_prefix
        token = query_augmentation_token or tokenizer.pad_token
        self.query_suffix = (token or "") * query_augmentation
        self.batch_size = batch_size
        self.max_image_pixels = max_image_pixels
        self.image_patches_only = image_patches_only
        image_token = getattr(self.processor, "image_token", None)
        self.image_token_id = (
            tokenizer.convert_tokens_to_ids(image_token) if image_token is not None else None
        )
        self.info = EncoderInfo(
            family="vlm-projection",
            name_or_path=str(name_or_path),
            dim=int(self.weight.shape[0]),
            revision=revision,
            query_template=f"{query_prefix}{{query}}{self.query_suffix}",
            document_template=document_prompt,
            options={
                "projection_key": key,
                "document_prompt": document_prompt,
                "query_prefix": query_prefix,
                "query_augmentation_token": query_augmentation_token,
                "query_augmentation": query_augmentation,
                "min_pixels": min_pixels,
                "max_pixels": max_pixels,
                "image_patches_only": image_patches_only,
            },
        )

    def _prompt(self, content: list[dict[str, str]]) -> str:
        messages = [{"role": "user", "content": content}]
        return str(
            self.processor.apply_chat_template(messages, add_generation_prompt=False)
        ).strip()

    def _image_inputs(self, images: list[Any]) -> Any:
        prompt = self._prompt([{"type": "text", "text": self.document_prompt}, {"type": "image"}])
        return self.processor(
            text=[prompt] * len(images),
            images=[[image] for image in images],
            return_tensors="pt",
            padding="longest",
        )

    def _query_inputs(self, texts: list[str]) -> Any:
        prompts = [
            self._prompt([{"type": "text", "text": self.query_prefix + text + self.query_suffix}])
            for text in texts
        ]
        return self.processor(text=prompts, return_tensors="pt", padding="longest")

    def _forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        hidden = self.model(**inputs).last_hidden_state.float()  # (B, L, hidden)
        projected = torch.nn.functional.linear(hidden, self.weight, self.bias)  # (B, L, dim)
        return torch.nn.functional.normalize(projected, dim=-1)
