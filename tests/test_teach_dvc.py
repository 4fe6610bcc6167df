"""`dvc repro teach` with an openai teacher after the dataset changed under the same pids: a request
for every changed question, none for an unchanged one (the local fake server counts them).

The real stage under DVC in a temporary copy of the project (sample, filter, split, teach; 20
questions): about 40 s on a shared 2-core machine, hence the e2e mark.
"""

from __future__ import annotations

import base64
import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image
from project_copy import copy_project, run, run_env
from teacher_server import FakeTeacher

pytestmark = pytest.mark.e2e


def question_echo(pid: str, sample: int, prompt: str) -> str:
    """Quotes the question it was asked, so a rationale shows which question it answers."""
    question = next(line for line in prompt.splitlines() if line.startswith("Question:"))
    gold = prompt.split("Correct answer: (", 1)[1][0]
    return (f"<SUMMARY> {question} </SUMMARY><CAPTION> The image. </CAPTION>"
            f"<REASONING> From the image. </REASONING><CONCLUSION> {gold} </CONCLUSION>")


def request_content(request: dict) -> tuple[str, bytes]:
    """(prompt text, image bytes) of one request the server received."""
    parts = request["body"]["messages"][0]["content"]
    text = next(p["text"] for p in parts if p["type"] == "text")
    url = next((p["image_url"]["url"] for p in parts if p["type"] == "image_url"), "")
    return text, base64.b64decode(url.split(",", 1)[1]) if url else b""


def taught_pids(project) -> dict[tuple[str, bytes], set[str]]:
    """(prompt text, image bytes) -> the train/val pids with that content, from the split tables."""
    from svrd.teach.prompt import build_prompt

    by_content: dict[tuple[str, bytes], set[str]] = {}
    for split in ("train", "val"):
        for rec in pq.read_table(project / f"data/split/{split}.parquet").to_pylist():
            by_content.setdefault((build_prompt(rec), rec["image"]), set()).add(rec["pid"])
    return by_content


def asked(server, project) -> list[str]:
    contents = taught_pids(project)
    return sorted(pid for r in server.requests for pid in contents[request_content(r)])


def test_changed_questions_and_only_they_are_asked_again(tmp_path):
    with FakeTeacher(responder=question_echo) as server:
        project = copy_project(tmp_path / "project", {
            "data.sample.per_family": 4, "teach.backend": "openai", "teach.model": "fake-teacher",
            "teach.base_url": server.base_url, "teach.concurrency": 4})
        env = run_env(tmp_path)
        run(["dvc", "repro", "teach"], project, env)
        first = asked(server, project)
        assert len(first) == len(server.requests) == len(set(first)) >= 10  # each train/val question once

        # The dataset changes under the same pids: two questions reworded, one image redrawn.
        problems_path = project / "data/sample/problems.json"
        problems = json.loads(problems_path.read_text())
        reworded, redrawn = first[0:2], first[2]
        for pid in reworded:
            problems[pid]["question"] += " Answer carefully."
        problems_path.write_text(json.dumps(problems, indent=1))
        image_path = project / "data/sample/images" / problems[redrawn]["split"] / redrawn / "image.png"
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (12, 200, 99)).save(buf, format="PNG")
        image_path.write_bytes(buf.getvalue())
        run(["dvc", "commit", "-f", "sample"], project, env)  # the edited dataset is the new version

        server.requests.clear()
        out = run(["dvc", "repro", "teach"], project, env).stdout
        assert "Running stage 'teach'" in out
        assert asked(server, project) == sorted([*reworded, redrawn])

    rationales = {r["pid"]: r for r in pq.read_table(project / "data/teach/rationales.parquet").to_pylist()}
    assert set(rationales) == set(first)
    assert all("Answer carefully." in rationales[pid]["summary"] for pid in reworded)
    assert not any("Answer carefully." in r["summary"] for pid, r in rationales.items() if pid not in reworded)
    assert "3 requests" in out and f"{len(first) - 3} cached" in out
