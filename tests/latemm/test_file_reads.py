"""Page images that an index names by file path (issue 30 B4, P22): one read policy
(``latemm.data.io.read_image_file``) for `latemm show`, its heat map and the reranker: only under
``--allow-files``, only regular files, under a size cap checked before reading. An image over
Pillow's decompression-bomb limit is a rejected row at index time, not a traceback."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store.errors import InputError
from latemm.cli import main
from latemm.data.io import image_bytes, read_image_file
from tests.latemm.tiny_models import build_colpali, build_qwen2_vl, png_bytes

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_paths_are_read_only_under_allow_files(tmp_path) -> None:
    allowed = tmp_path / "pages"
    allowed.mkdir()
    page = allowed / "p.png"
    page.write_bytes(png_bytes(8, 8, 0))
    secret = tmp_path / "secret.txt"
    secret.write_text("password\n")
    (allowed / "link.png").symlink_to(secret)

    assert read_image_file(page, [allowed]) == page.read_bytes()
    assert image_bytes({"bytes": None, "path": str(page)}, [allowed]) == page.read_bytes()
    with pytest.raises(InputError, match=r"secret.txt not read: pass --allow-files"):
        read_image_file(secret, [allowed])
    # A link inside an allowed folder is resolved first: it cannot lead out of it.
    with pytest.raises(InputError, match=r"link.png not read: pass --allow-files"):
        read_image_file(allowed / "link.png", [allowed])
    with pytest.raises(InputError, match=r"p.png not read: pass --allow-files"):
        read_image_file(page, [])  # the default of every search-time reader: nothing


@pytest.mark.parametrize("allow", [["/dev"], None])
def test_special_files_and_huge_files_are_refused_before_reading(tmp_path, allow) -> None:
    with pytest.raises(InputError, match=r"/dev/zero not read: it is not a regular file"):
        read_image_file("/dev/zero", allow)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"fifo not read: it is not a regular file"):
        read_image_file(fifo, None if allow is None else [tmp_path])  # would block if opened
    big = tmp_path / "big.png"
    with open(big, "wb") as fh:
        fh.truncate(4096)  # sparse
    with pytest.raises(InputError, match=r"big.png not read: it is 4,096 bytes, over the 1,000-"):
        read_image_file(big, None if allow is None else [tmp_path], max_bytes=1000)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Path:
    return build_qwen2_vl(tmp_path_factory.mktemp("qwen2vl"))


def _image_index(tmp_path: Path, paths: list[str]) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    n = len(paths)
    pq.write_table(
        pa.table(
            {
                "doc_id": [f"p{i}" for i in range(n)],
                "image": pa.array([{"bytes": None, "path": p} for p in paths], IMAGE),
                "text": [f"page {i}" for i in range(n)],
                "embedding": [rng.standard_normal((3, 8)).tolist() for _ in range(n)],
            }
        ),
        tmp_path / "c.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "query_id": ["q0"],
                "text": ["revenue"],
                "embedding": [rng.standard_normal((2, 8)).tolist()],
            }
        ),
        tmp_path / "q.parquet",
    )
    index = str(tmp_path / "idx")
    # At index time the user's own corpus is read as it is (these rows carry vectors).
    assert main(["index", str(tmp_path / "c.parquet"), "--index", index, "--quiet"]) == 0
    return index, str(tmp_path / "q.parquet")


def test_b4_rerank_reads_index_image_paths_only_under_allow_files(qwen, tmp_path, capsys):
    """Issue 30 B4: `--rerank` read any path an index names (``/dev/zero``: memory exhausted)."""
    index, queries = _image_index(tmp_path, ["/dev/zero"])
    search = ["search", index, queries, "--out", str(tmp_path / "r.parquet"), "--quiet"]
    rerank = ["--rerank", str(qwen), "--rerank-depth", "1"]
    assert main([*search, *rerank]) == 2
    err = capsys.readouterr().err
    assert "doc_id 'p0': image file /dev/zero not read: pass --allow-files" in err, err
    assert main([*search, *rerank, "--allow-files", "/dev"]) == 2
    err = capsys.readouterr().err
    assert "doc_id 'p0': image file /dev/zero not read: it is not a regular file" in err, err
    assert main([*search, "--allow-files", "/dev"]) == 2  # an option that cannot apply
    assert "it applies only with --rerank MODEL" in capsys.readouterr().err
    # The same through a multi-field index (fused search, then the reranker).
    fields = str(tmp_path / "fields-idx")
    corpus = str(tmp_path / "c.parquet")
    assert main(["index", corpus, "--index", fields, "--field", "emb=embedding:embedding"]) == 0
    search[1] = fields
    assert main([*search, *rerank]) == 2
    err = capsys.readouterr().err
    assert "doc_id 'p0': image file /dev/zero not read: pass --allow-files" in err, err


def test_rerank_reads_allowed_page_files(qwen, tmp_path, capsys) -> None:
    pages = tmp_path / "pages"
    pages.mkdir()
    paths = []
    for i in range(3):
        (pages / f"{i}.png").write_bytes(png_bytes(32, 32, i))
        paths.append(str(pages / f"{i}.png"))
    index, queries = _image_index(tmp_path, paths)
    run = tmp_path / "r.parquet"
    argv = ["search", index, queries, "--out", str(run), "--quiet", "--rerank", str(qwen)]
    assert main([*argv, "--rerank-depth", "3", "--allow-files", str(pages)]) == 0
    scores = pq.read_table(run).column("rerank_score").to_pylist()
    assert len(scores) == 3 and all(s is not None for s in scores)


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (its data is one short row):
    Pillow refuses it at open, before decoding anything."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (3 * 64 + 1))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_p22_a_decompression_bomb_is_a_rejected_row(tmp_path, capsys) -> None:
    """Issue 30 P22: a 20000x20000 PNG aborted `index` with a DecompressionBombError."""
    model = build_colpali(tmp_path / "colpali")
    pq.write_table(
        pa.table(
            {
                "doc_id": ["ok", "bomb"],
                "image": [png_bytes(32, 32, 0), _bomb_png(20000, 20000)],
            }
        ),
        tmp_path / "c.parquet",
    )
    index = str(tmp_path / "idx")
    argv = ["index", str(tmp_path / "c.parquet"), "--index", index, "--encoder", str(model)]
    assert main([*argv, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", index]) == 0
    out = capsys.readouterr().out
    assert "bomb" in out and "too large to decode safely" in out, out
    argv[3] = str(tmp_path / "idx2")  # (a re-run into idx skips the recorded reject)
    assert main([*argv, "--quiet", "--on-empty", "error"]) == 2
    err = capsys.readouterr().err
    assert "doc_id 'bomb'" in err and "too large to decode safely" in err, err
