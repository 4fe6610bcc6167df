"""The openai backend against a local fake OpenAI-compatible server."""

import base64
import json
import sqlite3
import time

import pytest
from teacher_server import GOLD_RE, FakeTeacher, llava_cot_answer, make_problems, teach_cfg

from svrd.teach import teach
from svrd.teach.base import TeacherError
from svrd.teach.openai_backend import OpenAIBackend


def run(rows, cfg, cache, **backend_kw):
    backend = OpenAIBackend(cfg, **{"backoff_base_s": 0.01, **backend_kw})
    return teach(rows, cfg, cache_path=cache, backend=backend, progress=False)


def cached_pids(cache) -> set[str]:
    with sqlite3.connect(cache) as db:
        return {pid for (pid,) in db.execute("SELECT pid FROM answers")}


def test_completes_through_429_500_garbage_and_timeouts(tmp_path):
    rows = make_problems(8)
    with FakeTeacher(script=["429", "500", "garbage", "empty", "slow"]) as server:
        server.slow_s = 1.0
        cfg = teach_cfg(base_url=server.base_url, concurrency=3, timeout_s=0.4)
        result = run(rows, cfg, tmp_path / "c.sqlite")
        assert result.metrics["agreed"] == 8 and result.metrics["retries"] == 5
        assert result.metrics["requests"] == 8
        answered = server.answered()
        assert sorted(answered) == [(r["pid"], 0) for r in rows]  # one good answer each
        assert server.max_inflight <= 3
        req = server.requests[0]
        assert req["model"] == "fake-teacher" and req["images"] == 1
        url = req["body"]["messages"][0]["content"][0]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        assert base64.b64decode(url.split(",", 1)[1]) == next(r["image"] for r in rows if r["pid"] == req["pid"])
        assert req["body"]["max_tokens"] == 64 and req["body"]["temperature"] == 0.0
        assert req["authorization"] == "Bearer EMPTY"  # no key in the environment: local server
    assert [r["pid"] for r in result.rows] == [r["pid"] for r in rows]
    assert all(r["correct"] and r["outcome"] == "agreed" for r in result.rows)

    # Everything is cached now: a second run sends nothing.
    with FakeTeacher() as server:
        again = run(rows, teach_cfg(base_url=server.base_url), tmp_path / "c.sqlite")
        assert server.requests == []
    assert again.metrics["cached"] == 8 and again.metrics["requests"] == 0
    assert again.rows == result.rows


def test_retry_after_is_honoured_over_backoff(tmp_path):
    with FakeTeacher(script=["429", "429"]) as server:  # retry-after-ms: 20
        t0 = time.perf_counter()
        result = run(make_problems(2), teach_cfg(base_url=server.base_url), tmp_path / "c.sqlite", backoff_base_s=30.0)
        assert time.perf_counter() - t0 < 5
    assert result.metrics["agreed"] == 2


@pytest.mark.parametrize("status", ["400", "401", "404", "422"])
def test_client_errors_fail_at_once_naming_the_pid(tmp_path, status):
    rows = make_problems(6)
    with FakeTeacher(faults={"q0003": [status]}) as server:
        with pytest.raises(TeacherError, match=rf"pid q0003: request refused \(HTTP {status}") as info:
            run(rows, teach_cfg(base_url=server.base_url, concurrency=2), tmp_path / "c.sqlite")
        assert [r["pid"] for r in server.requests].count("q0003") == 1  # not retried
    assert info.value.pid == "q0003"
    assert "q0000" in cached_pids(tmp_path / "c.sqlite")  # what arrived before is kept


def test_spent_retry_budget_fails_clearly_and_keeps_the_cache(tmp_path):
    rows = make_problems(6)
    cache = tmp_path / "c.sqlite"
    with FakeTeacher(faults={"q0002": ["500"] * 10}, delay=0.02) as server:
        with pytest.raises(TeacherError, match=r"pid q0002: HTTP 500; gave up after 3 attempts"):
            run(rows, teach_cfg(base_url=server.base_url, concurrency=2, max_retries=2), cache)
        assert [r["pid"] for r in server.requests].count("q0002") == 3
    done = cached_pids(cache)
    assert done and "q0002" not in done
    with FakeTeacher() as server:
        result = run(rows, teach_cfg(base_url=server.base_url), cache)
        asked = {r["pid"] for r in server.requests}
    assert asked == {r["pid"] for r in rows} - done  # nothing received is asked again
    assert len(result.rows) == 6 and result.metrics["cached"] == len(done)


def wrong_letter(prompt: str) -> str:
    gold = GOLD_RE.search(prompt).group(1)
    return "A" if gold != "A" else "B"


def sampling_responder(pid: str, sample: int, prompt: str) -> str:
    """q0000: right at once; q0001: right at sample 2; q0002: never right; q0003: unparseable, then right."""
    gold = GOLD_RE.search(prompt).group(1)
    if pid == "q0000" or (pid == "q0001" and sample == 2) or (pid == "q0003" and sample == 1):
        return llava_cot_answer(gold)
    if pid == "q0003":
        return "I am not sure."
    return llava_cot_answer(wrong_letter(prompt))


@pytest.mark.parametrize("on_disagree", ["substitute", "drop", "answer_only"])
def test_rejection_sampling_and_on_disagree(tmp_path, on_disagree):
    rows = make_problems(4)
    with FakeTeacher(responder=sampling_responder) as server:
        cfg = teach_cfg(base_url=server.base_url, samples=3, temperature=0.7, on_disagree=on_disagree)
        result = run(rows, cfg, tmp_path / "c.sqlite")
        asked = sorted(server.answered())
    # Round k asks only for questions with no agreeing candidate yet.
    assert asked == [("q0000", 0), ("q0001", 0), ("q0001", 1), ("q0001", 2), ("q0002", 0), ("q0002", 1),
                     ("q0002", 2), ("q0003", 0), ("q0003", 1)]
    m = result.metrics
    assert (m["agreed"], m["requests"]) == (3, 9)
    assert (m["substituted"], m["dropped"], m["answer_only"]) == {
        "substitute": (1, 0, 0), "drop": (0, 1, 0), "answer_only": (0, 0, 1)}[on_disagree]
    rows_by_pid = {r["pid"]: r for r in result.rows}
    assert rows_by_pid["q0001"]["sample"] == 2 and rows_by_pid["q0001"]["outcome"] == "agreed"
    assert rows_by_pid["q0003"]["sample"] == 1
    assert json.loads(rows_by_pid["q0000"]["decoding"]) == {
        "do_sample": True, "max_new_tokens": 64, "samples": 3, "temperature": 0.7}
    bad = rows_by_pid.get("q0002")
    if on_disagree == "drop":
        assert bad is None and len(result.rows) == 3
    elif on_disagree == "substitute":
        gold = "ABCDE"[rows[2]["answer"]]
        assert bad["outcome"] == "substituted" and bad["conclusion"] == gold
        assert bad["correct"] is False and bad["letter"] != gold  # the teacher's own letter is kept
        assert bad["reasoning"]
    else:
        assert bad["outcome"] == "answer_only" and bad["correct"] is False
        assert bad["summary"] == bad["caption"] == bad["reasoning"] == bad["conclusion"] == ""
        assert bad["raw"]


def test_greedy_samples_warn(tmp_path):
    with FakeTeacher() as server, pytest.warns(UserWarning, match="identical"):
        run(make_problems(1), teach_cfg(base_url=server.base_url, samples=2), tmp_path / "c.sqlite")


def test_changed_template_or_decoding_misses_the_cache(tmp_path, monkeypatch):
    import svrd.teach.prompt

    rows = make_problems(2)
    with FakeTeacher() as server:
        run(rows, teach_cfg(base_url=server.base_url), tmp_path / "c.sqlite")
        run(rows, teach_cfg(base_url=server.base_url, max_new_tokens=65), tmp_path / "c.sqlite")
        monkeypatch.setattr(svrd.teach.prompt, "TEMPLATE", svrd.teach.prompt.TEMPLATE + "\nBe brief.")
        run(rows, teach_cfg(base_url=server.base_url), tmp_path / "c.sqlite")
        assert len(server.answered()) == 6


def test_a_list_of_base_urls_spreads_requests_over_data_parallel_servers(tmp_path):
    rows = make_problems(8)
    with FakeTeacher(delay=0.05) as first, FakeTeacher(delay=0.05) as second:
        cfg = teach_cfg(base_url=[first.base_url, second.base_url], concurrency=4)
        result = run(rows, cfg, tmp_path / "c.sqlite")
        assert first.requests and second.requests  # both servers did work
        assert sorted(first.answered() + second.answered()) == sorted((r["pid"], 0) for r in rows)
        assert first.max_inflight <= 2 and second.max_inflight <= 2  # concurrency counts all servers
    assert result.metrics["agreed"] == 8 and len(result.rows) == 8


def test_params_accept_one_url_or_a_list():
    from svrd.params import ParamsError, load_params

    params = load_params()
    for value in ("http://a:8000/v1", ["http://a:8000/v1", "http://b:8000/v1"]):
        assert params.with_overrides({"teach.base_url": value}).teach.base_url == value
    for bad in ([], ["not a url"]):
        with pytest.raises(ParamsError, match="teach.base_url"):
            params.with_overrides({"teach.base_url": bad})
