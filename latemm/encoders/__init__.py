"""Encoders: pages and queries to multi-vectors. Only this package and the reranker import
transformers."""

from latemm.encoders.base import Encoder, EncoderInfo, MultiDeviceEncoder, MultiVectors, Page

__all__ = ["Encoder", "EncoderInfo", "MultiDeviceEncoder", "MultiVectors", "Page", "load_encoder"]


def load_encoder(
    name_or_path: str, *, devices: list[str] | None = None, **options: object
) -> Encoder:
    """An encoder for a hub id or local folder, chosen from its config.

    ``devices`` (e.g. ``["cuda:0", "cuda:1"]``) loads one replica per device and splits every
    batch between them (``MultiDeviceEncoder``); with neither ``devices`` nor ``device`` given
    and several GPUs visible, all of them are used.

    Vision retrieval checkpoints (``model_type`` colpali, colqwen2, colmodernvbert) get
    ``ColVisionEncoder``; other vision-language models (a ``vision_config`` in their config) get
    ``VLMProjectionEncoder`` (backbone plus the checkpoint's linear projection); anything else
    is treated as a text encoder (sentence-transformers folders and ColBERT checkpoints included).
    """
    if devices is None and options.get("device") is None:
        import torch

        if torch.cuda.device_count() > 1:
            devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if devices is not None and len(devices) > 1:
        return MultiDeviceEncoder(
            [load_encoder(name_or_path, **{**options, "device": d}) for d in devices]
        )
    if devices:
        options = {**options, "device": devices[0]}
    from latemm.encoders.text import TextEncoder

    config = _config(name_or_path)
    if config.get("model_type") in {"colpali", "colqwen2", "colmodernvbert"}:
        from latemm.encoders.vision import ColVisionEncoder

        return ColVisionEncoder(name_or_path, **options)  # type: ignore[arg-type]
    if "vision_config" in config:
        from latemm.encoders.vlm import VLMProjectionEncoder

        return VLMProjectionEncoder(name_or_path, **options)  # type: ignore[arg-type]
    return TextEncoder(name_or_path, **options)  # type: ignore[arg-type]


def _config(name_or_path: str) -> dict[str, object]:
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
