"""Encoders: pages and queries to multi-vectors. Only this package and the reranker import
transformers."""

from latemm.encoders.base import Encoder, EncoderInfo, MultiVectors, Page

__all__ = ["Encoder", "EncoderInfo", "MultiVectors", "Page"]
