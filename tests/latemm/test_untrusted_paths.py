"""Index folders are untrusted data (issue 30, B1, B2, P31, P32): a link planted anywhere in an
index, or a manifest entry naming a path outside it, never makes a verb read, write or delete
outside the index. Every verb refuses such an index with a one-line error naming the entry
(exit 2), and `latemm verify` reports it as damage (exit 1).

Four kinds of index are built once (plain, multi-field, sharded, multi-field x shards; precomputed vectors, no
model). Each test copies one, replaces one of its files or folders by a link to a copy placed
outside the index (next to a user's file), runs a verb and checks that nothing outside the
index changed: a sweep over every file and folder name of each kind, each verb (about 10 s), a
sample of names one test each (to read failures by name), and the issue's B1 and B2 scripts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latemm.cli import main
from tests.helpers import DIM, write_embedding_table

WORDS = "revenue profit growth market climate carbon energy solar policy budget".split()


def _corpus(path: Path, n: int, start: int = 0) -> Path:
    rng = np.random.default_rng(start)
    ids = [f"d{i:05d}" for i in range(start, start + n)]
    vectors = [rng.standard_normal((3 + i % 4, DIM)).astype(np.float32).tolist() for i in range(n)]
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8)) for i in range(n)]
    return write_embedding_table(path, ids, vectors, text=texts)


@dataclass(frozen=True)
class Built:
    kind: str
    index: Path  # the pristine index: copied, never changed
    corpus: Path
    more: Path  # a second corpus, for appending
    queries: Path

    def index_args(self, corpus: Path, idx: Path) -> list[str]:
        extra = {
            "plain": [],
            "fields": ["--field", "emb=embedding:embedding", "--field", "bm25=bm25"],
            "sharded": ["--shards", "2"],
            "fields-sharded": [
                *["--field", "emb=embedding:embedding", "--field", "bm25=bm25"],
                *["--shards", "2"],
            ],
        }[self.kind]
        return ["index", str(corpus), "--index", str(idx), "--quiet", *extra]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Built]:
    root = tmp_path_factory.mktemp("untrusted")
    corpus = _corpus(root / "c.parquet", 40)
    more = _corpus(root / "more.parquet", 5, start=100)
    rng = np.random.default_rng(7)
    queries = root / "q.parquet"
    pq.write_table(
        pa.table(
            {
                "query_id": ["q0", "q1"],
                "text": ["revenue growth", "solar energy"],
                "embedding": pa.array(
                    [rng.standard_normal((4, DIM)).astype(np.float32).tolist() for _ in range(2)],
                    pa.list_(pa.list_(pa.float32())),
                ),
            }
        ),
        queries,
    )
    out = {}
    for kind in ("plain", "fields", "sharded", "fields-sharded"):
        b = Built(kind, root / f"idx-{kind}", corpus, more, queries)
        assert main(b.index_args(corpus, b.index)) == 0
        if kind != "sharded":  # leaves a deleted bitmap (plain) and a second bm25 build behind
            assert main(["delete", str(b.index), "--ids", "d00003"]) == 0
        out[kind] = b
    return out


def _names(index: Path) -> list[str]:
    """Every file and folder of an index, relative to it (the LOCK file included)."""
    return sorted(str(p.relative_to(index)) for p in index.rglob("*"))


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Everything under ``folder``: relative name -> (size, sha256) (folders: (-1, ""))."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_dir() and not path.is_symlink():
            out[key] = (-1, "")
        else:
            data = path.read_bytes()
            out[key] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def _plant(b: Built, name: str, work: Path) -> tuple[Path, Path]:
    """A copy of ``b``'s index in which ``name`` is a link to a copy of it outside the index,
    in a folder that also holds a user's file. Returns (index, outside folder)."""
    idx = work / "idx"
    shutil.copytree(b.index, idx, symlinks=True)
    outside = work / "outside"
    outside.mkdir()
    (outside / "thesis.tex").write_text("my precious thesis\n")
    target = idx / name
    copy = outside / "copy"
    if target.is_dir():
        shutil.copytree(target, copy)
        (copy / "thesis.tex").write_text("another precious file\n")
        shutil.rmtree(target)
    else:
        shutil.copyfile(target, copy)
        target.unlink()
    target.symlink_to(copy)
    return idx, outside


def _verbs(b: Built, idx: Path, work: Path) -> dict[str, list[str]]:
    verbs = {
        "verify": ["verify", str(idx)],
        "search": ["search", str(idx), str(b.queries), "--out", str(work / "run.parquet")],
        "info": ["info", str(idx)],
        "index": b.index_args(b.more, idx),
    }
    verbs["delete"] = ["delete", str(idx), "--ids", "d00001"]
    verbs["compact"] = ["compact", str(idx)]
    return verbs


def _check(b: Built, name: str, verb: str, tmp_path: Path, capsys) -> None:
    idx, outside = _plant(b, name, tmp_path)
    before = _snapshot(outside)
    capsys.readouterr()
    code = main(_verbs(b, idx, tmp_path)[verb])
    err = capsys.readouterr().err
    assert _snapshot(outside) == before, f"{verb} changed files outside the index via {name}"
    assert (idx / name).is_symlink(), f"{verb} replaced the planted link {name}"
    if verb == "verify":
        assert code == 1, err
        assert "symbolic link" in err and "problem(s)" in err, err
    else:
        assert code == 2, err
        assert f"latemm {verb}: error:" in err and "symbolic link" in err, err
        assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3, err


# One file and one folder of each kind, every verb: the default suite.
SAMPLES = {
    "plain": ["segments", "manifest.json"],
    "fields": ["fields/bm25", "fields/emb/manifest.json", "fields.json"],
    "sharded": ["shards/shard-0001", "shards.json"],
    "fields-sharded": [
        "shards/shard-0001/fields/bm25",
        "shards/shard-0000/pages",
        "shards/shard-0000/fields.json",
        "shards.json",
    ],
}
VERBS = ["verify", "search", "info", "index", "delete", "compact"]


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, names in SAMPLES.items() for n in names])
@pytest.mark.parametrize("verb", VERBS)
def test_a_planted_link_is_refused_by_every_verb(built, kind, name, verb, tmp_path, capsys):
    b = built[kind]
    if verb not in _verbs(b, b.index, tmp_path):
        pytest.skip(f"{kind} indexes have no {verb}")
    _check(b, name, verb, tmp_path, capsys)


@pytest.mark.parametrize("kind", ["plain", "fields", "sharded", "fields-sharded"])
def test_every_name_of_every_kind_with_every_verb(built, kind, tmp_path, capsys):
    b = built[kind]
    names = _names(b.index)
    assert len(names) > 5
    for name in names:
        for verb in _verbs(b, b.index, tmp_path):
            work = tmp_path / f"{name.replace('/', '_')}-{verb}"
            work.mkdir()
            _check(b, name, verb, work, capsys)


def test_b1_a_symlinked_bm25_field_folder_is_not_emptied(built, tmp_path, capsys) -> None:
    """Issue 30 B1: `compact` and `delete` emptied the folder a bm25 field linked to."""
    idx = tmp_path / "idx"
    shutil.copytree(built["fields"].index, idx)
    victim = tmp_path / "victim"
    (victim / "photos").mkdir(parents=True)
    (victim / "thesis.tex").write_text("precious\n")
    (victim / "photos" / "a.jpg").write_text("x\n")
    shutil.rmtree(idx / "fields" / "bm25")
    (idx / "fields" / "bm25").symlink_to(victim)
    for argv in (["compact", str(idx)], ["delete", str(idx), "--ids", "d00001"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{idx / 'fields' / 'bm25'} is a symbolic link" in err, err
    assert sorted(p.name for p in victim.rglob("*")) == ["a.jpg", "photos", "thesis.tex"]
    assert (victim / "thesis.tex").read_text() == "precious\n"


def test_b1_a_symlinked_vector_field_gets_no_segment_outside(built, tmp_path, capsys) -> None:
    idx = tmp_path / "idx"
    shutil.copytree(built["fields"].index, idx)
    victim = tmp_path / "victim"
    shutil.copytree(idx / "fields" / "emb", victim)
    shutil.rmtree(idx / "fields" / "emb")
    (idx / "fields" / "emb").symlink_to(victim)
    before = _snapshot(victim)
    assert main(built["fields"].index_args(built["fields"].more, idx)) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert _snapshot(victim) == before


def test_b2_a_symlinked_corpus_copy_does_not_overwrite_a_user_file(built, tmp_path, capsys):
    """Issue 30 B2: the fields build wrote its corpus copy through a planted link."""
    idx = tmp_path / "idx"
    shutil.copytree(built["fields"].index, idx)
    thesis = tmp_path / "thesis.tex"
    thesis.write_text("my precious thesis\n")
    (idx / "fields" / ".corpus-emb.parquet").symlink_to(thesis)
    b = built["fields"]
    argv = ["index", str(b.corpus), "--index", str(idx), "--field", "emb=embedding:embedding"]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert ".corpus-emb.parquet is a symbolic link" in err, err
    assert thesis.read_text() == "my precious thesis\n"


def _edit_fields(idx: Path, edit) -> None:
    path = idx / "fields.json"
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_p31_a_bm25_dir_outside_the_index_is_damage_not_a_read(built, where, tmp_path, capsys):
    """Issue 30 P31: fields.json's bm25 ``dir`` set outside the index (with ``files: {}``):
    verify passed and search read ``docs.parquet`` outside the index."""
    idx = tmp_path / "idx"
    shutil.copytree(built["fields"].index, idx)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(next((idx / "fields" / "bm25").iterdir()), elsewhere)
    target = str(elsewhere) if where == "absolute" else "../../../elsewhere"

    def edit(payload):
        bm25 = next(f for f in payload["fields"] if f["name"] == "bm25")
        bm25["options"]["dir"], bm25["options"]["files"] = target, {}

    _edit_fields(idx, edit)
    assert main(["verify", str(idx)]) == 1
    err = capsys.readouterr().err
    assert f"{target!r}, not a plain file name inside the index" in err, err
    queries = built["fields"].queries
    assert main(["search", str(idx), str(queries), "--out", str(tmp_path / "r.parquet")]) == 2
    err = capsys.readouterr().err
    assert "not a plain file name inside the index" in err and "Traceback" not in err


def test_p32_a_missing_field_folder_is_a_reported_problem(built, tmp_path, capsys) -> None:
    """Issue 30 P32: a deleted sub-index folder made verify exit 2 ("create one")."""
    idx = tmp_path / "idx"
    shutil.copytree(built["fields"].index, idx)
    shutil.rmtree(idx / "fields" / "emb")
    assert main(["verify", str(idx)]) == 1
    err = capsys.readouterr().err
    assert f"field 'emb': {idx / 'fields' / 'emb'}: the field's sub-index folder is missing" in err
    assert "1 problem(s)" in err


def test_a_planted_lock_link_is_not_written_through(built, tmp_path, capsys) -> None:
    """The writer's LOCK file is truncated and written with the writer's pid: through a link,
    that would overwrite the user's file."""
    for kind in ("plain", "fields"):
        idx = tmp_path / kind
        shutil.copytree(built[kind].index, idx)
        thesis = tmp_path / f"thesis-{kind}.tex"
        thesis.write_text("precious\n")
        (idx / "LOCK").unlink(missing_ok=True)
        os.symlink(thesis, idx / "LOCK")
        assert main(["delete", str(idx), "--ids", "d00001"]) == 2
        assert "LOCK is a symbolic link" in capsys.readouterr().err
        assert thesis.read_text() == "precious\n"


def test_a_bm25_file_name_outside_the_build_is_damage(built, tmp_path, capsys) -> None:
    """fields.json lists a bm25 build's files by name; ``../`` names are not read (hashed)."""
    idx = tmp_path / "idx"
    shutil.copytree(built["fields"].index, idx)
    secret = tmp_path / "secret.txt"
    secret.write_text("password\n")

    def edit(payload):
        bm25 = next(f for f in payload["fields"] if f["name"] == "bm25")
        bm25["options"]["files"]["../../../../secret.txt"] = {"size": 9, "sha256": "0" * 64}

    _edit_fields(idx, edit)
    assert main(["verify", str(idx)]) == 1
    err = capsys.readouterr().err
    assert "'../../../../secret.txt', not a plain file name inside the index" in err, err
    queries = built["fields"].queries
    assert main(["search", str(idx), str(queries), "--out", str(tmp_path / "r.parquet")]) == 2
    assert "'../../../../secret.txt', not a plain file name" in capsys.readouterr().err
