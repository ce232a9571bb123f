"""Tiny real-architecture checkpoints built from configs, for tests without downloads.

Random weights, a tokenizer trained on the spot with ``tokenizers``, image processors built
locally; everything is saved to a folder and loaded back through ``from_pretrained`` exactly as a
user's checkpoint would be.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

WORDS = (
    "the a of and to in is for on with what which how many page chart table figure revenue year "
    "report total percent growth image document query answer true false yes no relevant system "
    "user assistant describe question company market share data model results show shows"
).split()


def train_tokenizer(special_tokens: list[str], *, unk: str = "<unk>"):
    """A small word-level tokenizer (lower-cased, whitespace/punctuation split) with the given
    special tokens first in its vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token=unk))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    trainer = trainers.WordLevelTrainer(special_tokens=[unk, *special_tokens])
    corpus = [" ".join(WORDS[i : i + 8]) for i in range(0, len(WORDS), 3)] + list("0123456789?.,:")
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of ``token``, a special token the builder put in ``tokenizer``'s vocabulary
    (``convert_tokens_to_ids`` would silently give the unknown token's id for a misspelt one)."""
    got = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(got, int) or got == tokenizer.unk_token_id:
        raise ValueError(f"{token!r} is not in the tokenizer's vocabulary")
    return got


def png_bytes(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_colpali(folder: Path) -> Path:
    from transformers import (
        ColPaliConfig,
        ColPaliForRetrieval,
        ColPaliProcessor,
        GemmaConfig,
        PaliGemmaConfig,
        PreTrainedTokenizerFast,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    torch.manual_seed(0)
    raw = train_tokenizer(["<pad>", "<bos>", "<eos>", "<image>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=7,
    )
    text = GemmaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vlm = PaliGemmaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=token_id(tokenizer, "<image>"),
        projection_dim=32,
    )
    model = ColPaliForRetrieval(ColPaliConfig(vlm_config=vlm, embedding_dim=24)).eval()
    image_processor = SiglipImageProcessor(
        size={"height": 28, "width": 28}, do_normalize=True, image_seq_length=(28 // 7) ** 2
    )
    processor = ColPaliProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer():
    from transformers import PreTrainedTokenizerFast

    raw = train_tokenizer(QWEN_SPECIAL)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def qwen2_vl_config(tokenizer, *, text: dict | None = None, vision: dict | None = None):
    """A tiny Qwen2-VL config for ``tokenizer``; ``text`` and ``vision`` override its sizes
    (``experiments/bench_gpu.py`` builds Qwen2-VL-2B's shape this way)."""
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [2, 3, 3],
                "rope_theta": 10000.0,
            },
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.eos_token_id,
            **(text or {}),
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
            **(vision or {}),
        },
        image_token_id=token_id(tokenizer, "<|image_pad|>"),
        video_token_id=token_id(tokenizer, "<|video_pad|>"),
        vision_start_token_id=token_id(tokenizer, "<|vision_start|>"),
        vision_end_token_id=token_id(tokenizer, "<|vision_end|>"),
    )


def qwen_image_processor():
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(
        min_pixels=28 * 28 * 4,
        max_pixels=28 * 28 * 16,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    )


def build_colqwen2(folder: Path) -> Path:
    from transformers import ColQwen2Config, ColQwen2ForRetrieval, ColQwen2Processor

    torch.manual_seed(0)
    tokenizer = qwen_tokenizer()
    config = ColQwen2Config(vlm_config=qwen2_vl_config(tokenizer).to_dict(), embedding_dim=24)
    model = ColQwen2ForRetrieval(config).eval()
    processor = ColQwen2Processor(image_processor=qwen_image_processor(), tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_qwen2_vl(folder: Path) -> Path:
    """A tiny Qwen2-VL chat model (image-text-to-text) with its processor, for the reranker."""
    from transformers import (
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    torch.manual_seed(0)
    tokenizer = qwen_tokenizer()
    model = Qwen2VLForConditionalGeneration(qwen2_vl_config(tokenizer)).eval()
    processor = Qwen2VLProcessor(
        image_processor=qwen_image_processor(),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_colbert_pylate(folder: Path, *, query_length: int = 12) -> Path:
    """A tiny BERT ColBERT checkpoint in the PyLate (sentence-transformers) layout: a Dense
    projection module, [Q]/[D] prefixes and query augmentation with [MASK]."""
    import json

    from safetensors.torch import save_file
    from tokenizers import processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    raw = train_tokenizer(
        ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]"], unk="[UNK]"
    )
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", raw.token_to_id("[CLS]")), ("[SEP]", raw.token_to_id("[SEP]"))],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        additional_special_tokens=["[unused0]", "[unused1]"],
    )
    model = BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    ).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
            ]
        )
    )
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "query_prefix": "[unused0]",
                "document_prefix": "[unused1]",
                "query_length": query_length,
                "do_query_expansion": True,
            }
        )
    )
    (folder / "1_Dense").mkdir()
    (folder / "1_Dense" / "config.json").write_text(
        json.dumps(
            {
                "in_features": 32,
                "out_features": 16,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            }
        )
    )
    save_file({"linear.weight": torch.randn(16, 32)}, str(folder / "1_Dense" / "model.safetensors"))
    return folder


def build_vlm_with_projection(folder: Path, *, dim: int = 24) -> Path:
    """A ColIdefics3-style checkpoint: a tiny Qwen2-VL chat model whose safetensors also hold a
    ``linear`` projection (hidden -> dim) beside the backbone, as colpali-engine saves them."""
    from safetensors.torch import load_file, save_file

    build_qwen2_vl(folder)
    weights = load_file(str(folder / "model.safetensors"))
    generator = torch.Generator().manual_seed(1)
    weights["linear.weight"] = torch.randn(dim, 32, generator=generator) / 32**0.5
    weights["linear.bias"] = torch.randn(dim, generator=generator) * 0.1
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def build_colmodernvbert(folder: Path) -> Path:
    """A tiny ColModernVBert (ModernBERT text, SigLIP vision, pixel shuffle 2, Idefics3 image
    processor splitting pages into 32-pixel tiles of 4 image tokens each)."""
    from transformers import (
        ColModernVBertConfig,
        ColModernVBertForRetrieval,
        ColModernVBertProcessor,
        Idefics3ImageProcessor,
        ModernBertConfig,
        ModernVBertConfig,
        PreTrainedTokenizerFast,
        SiglipVisionConfig,
    )

    torch.manual_seed(0)
    special = [
        "<pad>",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "<|begin_of_text|>",
        "<fake_token_around_image>",
        "<image>",
        "<end_of_utterance>",
        "<global-img>",
    ] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(special),
        pad_token="<pad>",
        unk_token="<unk>",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="<|begin_of_text|>",
    )
    text = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        layer_types=["full_attention"] * 2,  # global attention in every layer
        max_position_embeddings=512,
    )
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    vlm = ModernVBertConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_id=token_id(tokenizer, "<image>"),
        pixel_shuffle_factor=2,
    )
    model = ColModernVBertForRetrieval(
        ColModernVBertConfig(vlm_config=vlm, embedding_dim=24)
    ).eval()
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}
    )
    processor = ColModernVBertProcessor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_idefics3(folder: Path) -> Path:
    """A tiny Idefics3 (SmolVLM-style) chat model: Llama text, SigLIP vision, pixel shuffle 2,
    images split into 32-pixel tiles of 4 image tokens each; its own chat template."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        LlamaConfig,
        PreTrainedTokenizerFast,
        SiglipVisionConfig,
    )

    torch.manual_seed(0)
    special = [
        "<pad>",
        "<|begin_of_text|>",
        "<end_of_utterance>",
        "<fake_token_around_image>",
        "<image>",
        "<global-img>",
    ] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(special),
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<|begin_of_text|>",
        eos_token="<end_of_utterance>",
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config = Idefics3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_id=token_id(tokenizer, "<image>"),
        scale_factor=2,
    )
    model = Idefics3ForConditionalGeneration(config).eval()
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=4,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_qwen3_vl(folder: Path) -> Path:
    """A tiny Qwen3-VL chat model (interleaved M-RoPE, DeepStack visual features, 16-pixel
    patches merged 2x2) with its processor: the Qwen3-VL-Embedding backbone."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    torch.manual_seed(0)
    tokenizer = qwen_tokenizer()
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "rope_scaling": rope,
            "rope_parameters": {**rope, "rope_theta": 10000.0},
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 32,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
        image_token_id=token_id(tokenizer, "<|image_pad|>"),
        video_token_id=token_id(tokenizer, "<|video_pad|>"),
        vision_start_token_id=token_id(tokenizer, "<|vision_start|>"),
        vision_end_token_id=token_id(tokenizer, "<|vision_end|>"),
    )
    model = Qwen3VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 16},
    )
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
