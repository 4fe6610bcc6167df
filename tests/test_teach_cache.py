"""The teacher cache answers for the content of a request, never only for a pid.

Each test runs the openai backend against the local fake server and counts the requests it
receives: a cached answer sends none, a changed request sends one.
"""

import hashlib
import io
import json
import sqlite3

import pytest
from PIL import Image
from teacher_server import FakeTeacher, make_problems, teach_cfg

from svrd.teach import teach
from svrd.teach.openai_backend import OpenAIBackend


def run(rows, cfg, cache, backend_cls=OpenAIBackend):
    return teach(rows, cfg, cache_path=cache, backend=backend_cls(cfg, backoff_base_s=0.01), progress=False)


def asked_pids(server) -> list[str]:
    return sorted(pid for pid, _ in server.answered())


def echo_question(pid: str, sample: int, prompt: str) -> str:
    """A rationale that quotes the question it was asked, so a row shows which question it answers."""
    question = next(line for line in prompt.splitlines() if line.startswith("Question:"))
    gold = prompt.split("Correct answer: (", 1)[1][0]
    return (f"<SUMMARY> {question} </SUMMARY><CAPTION> An image. </CAPTION>"
            f"<REASONING> Looking at it. </REASONING><CONCLUSION> {gold} </CONCLUSION>")


def other_png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (seed % 256, 200, 7)).save(buf, format="PNG")
    return buf.getvalue()


def test_changed_question_under_the_same_pid_is_asked_again(tmp_path):
    rows = make_problems(4)
    cache = tmp_path / "c.sqlite"
    with FakeTeacher(responder=echo_question) as server:
        run(rows, teach_cfg(base_url=server.base_url), cache)
        changed = [dict(r) for r in rows]
        changed[2]["question"] = "[q0002] Which option fits the NEW picture?"
        result = run(changed, teach_cfg(base_url=server.base_url), cache)
        assert asked_pids(server) == ["q0000", "q0001", "q0002", "q0002", "q0003"]
    assert (result.metrics["requests"], result.metrics["cached"]) == (1, 3)
    by_pid = {r["pid"]: r for r in result.rows}
    assert "NEW picture" in by_pid["q0002"]["summary"]  # the answer to the new question, not the old one
    assert "NEW picture" not in by_pid["q0001"]["summary"]


def test_two_sources_with_colliding_pids_never_share_answers(tmp_path):
    """Hugging Face copies reuse hf-{split}-{row}: the same pids for different questions."""
    first = make_problems(3)
    second = [dict(r, question=r["question"].replace("Which option", "Which other option"),
                   image=other_png(i)) for i, r in enumerate(first)]
    cache = tmp_path / "c.sqlite"
    with FakeTeacher(responder=echo_question) as server:
        a = run(first, teach_cfg(base_url=server.base_url), cache)
        b = run(second, teach_cfg(base_url=server.base_url), cache)
        assert b.metrics["requests"] == 3 and b.metrics["cached"] == 0
        again = run(first, teach_cfg(base_url=server.base_url), cache)  # both kept side by side
        assert len(server.answered()) == 6
    assert again.metrics["cached"] == 3 and again.rows == a.rows
    assert all("Which other option" in r["summary"] for r in b.rows)


class RenamedBackend(OpenAIBackend):
    """The same server under another backend name: only the key's backend field differs."""

    name = "openai-compatible"


def change_prompt_text(rows, cfg):
    return [dict(r, hint=r["hint"] + " Look closely.") for r in rows], cfg, OpenAIBackend


def change_image_bytes(rows, cfg):
    return [dict(r, image=other_png(i + 100)) for i, r in enumerate(rows)], cfg, OpenAIBackend


def change_model(rows, cfg):
    return rows, teach_cfg(**{**vars(cfg), "model": "fake-teacher-v2"}), OpenAIBackend


def change_backend(rows, cfg):
    return rows, cfg, RenamedBackend


def change_decoding(rows, cfg):
    return rows, teach_cfg(**{**vars(cfg), "temperature": 0.9}), OpenAIBackend


def change_max_new_tokens(rows, cfg):
    return rows, teach_cfg(**{**vars(cfg), "max_new_tokens": 65}), OpenAIBackend


@pytest.mark.parametrize("change", [change_prompt_text, change_image_bytes, change_model, change_backend,
                                    change_decoding, change_max_new_tokens], ids=lambda f: f.__name__)
def test_each_part_of_the_request_is_in_the_key(tmp_path, change):
    rows = make_problems(2)
    cache = tmp_path / "c.sqlite"
    with FakeTeacher() as server:
        cfg = teach_cfg(base_url=server.base_url, temperature=0.5)
        run(rows, cfg, cache)
        assert run(rows, cfg, cache).metrics["requests"] == 0  # unchanged: all cached
        new_rows, new_cfg, backend_cls = change(rows, cfg)
        result = run(new_rows, new_cfg, cache, backend_cls)
    assert (result.metrics["requests"], result.metrics["cached"]) == (2, 0)


def wrong_first(pid: str, sample: int, prompt: str) -> str:
    gold = prompt.split("Correct answer: (", 1)[1][0]
    letter = gold if sample == 1 else ("B" if gold == "A" else "A")
    return f"<SUMMARY> s </SUMMARY><CAPTION> c </CAPTION><REASONING> r </REASONING><CONCLUSION> {letter} </CONCLUSION>"


def test_sample_index_is_in_the_key(tmp_path):
    rows = make_problems(2)
    cache = tmp_path / "c.sqlite"
    with FakeTeacher(responder=wrong_first) as server:
        run(rows, teach_cfg(base_url=server.base_url, temperature=0.5, samples=1), cache)
        result = run(rows, teach_cfg(base_url=server.base_url, temperature=0.5, samples=2), cache)
        # Sample 0 comes from the cache; sample 1 is a new request (not sample 0's answer again).
        assert sorted(server.answered()) == [("q0000", 0), ("q0000", 1), ("q0001", 0), ("q0001", 1)]
    assert (result.metrics["requests"], result.metrics["cached"], result.metrics["agreed"]) == (2, 2, 2)


def old_format_key(backend, model, prompt_version, generation, pid, sample) -> str:
    """The version-1 key (pid-keyed), re-implemented as it was written before this change."""
    blob = json.dumps({"backend": backend, "model": model, "prompt_version": prompt_version,
                       "generation": generation, "pid": str(pid), "sample": int(sample)},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def test_answers_under_the_old_pid_key_are_ignored_and_counted(tmp_path, capsys):
    from svrd.teach.prompt import PROMPT_VERSION

    rows = make_problems(3)
    cache = tmp_path / "c.sqlite"
    with sqlite3.connect(cache) as db:  # a cache file as the previous version wrote it
        db.execute("CREATE TABLE answers (key TEXT PRIMARY KEY, pid TEXT NOT NULL, sample INTEGER NOT NULL,"
                   " backend TEXT, model TEXT, prompt_version TEXT, text TEXT NOT NULL, created REAL)")
        for r in rows:
            key = old_format_key("openai", "fake-teacher", PROMPT_VERSION,
                                 {"temperature": 0.0, "max_new_tokens": 64}, r["pid"], 0)
            db.execute("INSERT INTO answers VALUES (?, ?, 0, 'openai', 'fake-teacher', ?, ?, 0)",
                       (key, r["pid"], PROMPT_VERSION, "<CONCLUSION> stale answer for another question"))
    with FakeTeacher() as server:
        result = run(rows, teach_cfg(base_url=server.base_url), cache)
        assert asked_pids(server) == ["q0000", "q0001", "q0002"]
    assert result.metrics["cached"] == 0 and result.extra["stale_cache_entries"] == 3
    assert "3 cached answers" in capsys.readouterr().err
    assert not any("stale answer" in r["raw"] for r in result.rows)


# ------------------------------------------------ the AnswerCache store itself (no server)


def test_default_cache_path_is_the_documented_location(monkeypatch, tmp_path):
    from pathlib import Path

    from svrd.teach.cache import default_cache_path

    monkeypatch.delenv("SVRD_CACHE_DIR", raising=False)
    assert default_cache_path() == Path(".svrd_cache") / "teach.sqlite"
    monkeypatch.setenv("SVRD_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_path() == tmp_path / "elsewhere" / "teach.sqlite"


def test_answer_cache_store_counts_reads_in_chunks_and_creates_its_folders(tmp_path):
    from svrd.teach.cache import KEY_VERSION, AnswerCache, NullCache

    cache = AnswerCache(tmp_path / "a" / "b" / "teach.sqlite")  # folders that do not exist yet
    keys = [f"k{i:04d}" for i in range(1203)]  # more than two chunks of 500
    for i, key in enumerate(keys):
        cache.put(key, f"text {i}", pid=f"p{i}", sample=0, backend="b", model="m", prompt_version="v", request="r")
    assert len(cache) == 1203 and cache.stale_entries() == 0
    found = cache.get_many([*keys, "missing"])
    assert found == {key: f"text {i}" for i, key in enumerate(keys)}
    # a column another process added between our check and our ALTER (SQLite names are
    # case-insensitive, so this spelling passes the check and the ALTER finds it there)
    cache._add_column("KEY_VERSION INTEGER")
    with pytest.raises(sqlite3.OperationalError):
        cache._add_column("not a column definition (")
    cache.close()
    with sqlite3.connect(tmp_path / "a" / "b" / "teach.sqlite") as db:
        assert db.execute("SELECT DISTINCT key_version FROM answers").fetchall() == [(KEY_VERSION,)]
    null = NullCache()
    null.put("k", "t", pid="p")
    assert (null.get_many(["k"]), len(null), null.stale_entries(), null.path) == ({}, 0, 0, None)
