"""A fake OpenAI-compatible teacher: POST /v1/chat/completions on 127.0.0.1, random free port.

    with FakeTeacher(delay=0.2) as server:        # server.base_url -> http://127.0.0.1:PORT/v1
        ...
        server.requests                            # every request received, in arrival order

Scripted trouble: `script` is a list of faults served to the first requests in arrival order,
`faults` maps a pid to a list of faults for that pid's requests (consumed in order). A fault is
"429" (with Retry-After), "500", "garbage" (200 with a non-JSON body), "empty" (200 with JSON
lacking `choices`), "slow" (answers after `slow_s` seconds: a client timeout), "400", "401", "404", "422". The answer text comes from `responder(pid,
sample, prompt)`; the default concludes with the gold letter the teacher prompt states. The
pid is read from the question text ("Question: [pid] ..."), the sample from the request seed.

Run standalone (the benchmark does, so the server's CPU is not the client's):
    python tests/teacher_server.py --delay 0.2     # prints the port, serves until killed
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PID_RE = re.compile(r"Question: \[([^\]]+)\]")
GOLD_RE = re.compile(r"Correct answer: \(([A-E])\)")


def llava_cot_answer(letter: str, text: str = "") -> str:
    """What LLaVA-CoT writes: spaced tags, the letter with the option text, no closing tag at the end."""
    option = f"{letter}: {text}" if text else letter
    return (
        "<SUMMARY> I will look at the image and the options to decide. </SUMMARY>\n\n"
        "<CAPTION> The image shows the objects the question is about. </CAPTION>\n\n"
        "<REASONING> Comparing the options with what the image shows leads to one answer. </REASONING>\n\n"
        f"<CONCLUSION> {option}"
    )


def gold_responder(pid: str, sample: int, prompt: str) -> str:
    m = GOLD_RE.search(prompt)
    return llava_cot_answer(m.group(1) if m else "A")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        teacher: FakeTeacher = self.server.teacher
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, b'{"error": {"message": "bad json"}}')
            return
        texts = [part.get("text", "") for msg in body.get("messages", []) for part in
                 (msg["content"] if isinstance(msg.get("content"), list) else [{"text": msg.get("content", "")}])
                 if isinstance(part, dict)]
        prompt = "\n".join(t for t in texts if t)
        images = [part for msg in body.get("messages", []) if isinstance(msg.get("content"), list)
                  for part in msg["content"] if part.get("type") == "image_url"]
        m = PID_RE.search(prompt)
        pid = m.group(1) if m else None
        sample = int(body.get("seed") or 0)
        fault = teacher._next_fault(pid)
        teacher._record({"pid": pid, "sample": sample, "fault": fault, "time": time.monotonic(),
                         "model": body.get("model"), "images": len(images),
                         "image_prefix": images[0]["image_url"]["url"][:22] if images else None,
                         "authorization": self.headers.get("Authorization"), "body": body})
        with teacher._lock:
            teacher.inflight += 1
            teacher.max_inflight = max(teacher.max_inflight, teacher.inflight)
        try:
            if teacher.delay:
                time.sleep(teacher.delay)
            if fault == "slow":
                time.sleep(teacher.slow_s)
        finally:
            with teacher._lock:
                teacher.inflight -= 1
        if fault == "slow":
            fault = None
        if fault == "429":
            self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "0", "retry-after-ms": "20"})
        elif fault == "500":
            self._send(500, b'{"error": {"message": "internal error"}}')
        elif fault == "garbage":
            self._send(200, b"<html>upstream proxy said hello</html> not json {")
        elif fault == "empty":
            self._send(200, b'{"id": "x", "object": "chat.completion"}')
        elif fault in ("400", "401", "404", "422"):
            msg = json.dumps({"error": {"message": f"scripted {fault} for pid {pid}"}}).encode()
            self._send(int(fault), msg)
        else:
            text = teacher.responder(pid, sample, prompt)
            reply = {
                "id": f"chatcmpl-{pid}-{sample}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            self._send(200, json.dumps(reply).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    teacher: FakeTeacher

    def handle_error(self, request, client_address) -> None:  # a client that timed out and left
        pass


class FakeTeacher:
    def __init__(self, *, delay: float = 0.0, responder=gold_responder, script: list[str] | None = None,
                 faults: dict[str, list[str]] | None = None, port: int = 0):
        self.delay = delay
        self.responder = responder
        self.script = list(script or [])
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.requests: list[dict] = []
        self.inflight = 0
        self.max_inflight = 0
        self.slow_s = 1.0
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.teacher = self
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread: threading.Thread | None = None

    def _next_fault(self, pid: str | None) -> str | None:
        with self._lock:
            if pid in self.faults and self.faults[pid]:
                return self.faults[pid].pop(0)
            if self.script:
                return self.script.pop(0)
            return None

    def _record(self, entry: dict) -> None:
        with self._lock:
            self.requests.append(entry)

    def answered(self) -> list[tuple[str, int]]:
        """(pid, sample) of requests that got a real answer."""
        with self._lock:
            return [(r["pid"], r["sample"]) for r in self.requests if r["fault"] is None]

    def start(self) -> FakeTeacher:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeTeacher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible teacher")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = FakeTeacher(delay=args.delay, port=args.port)
    print(server.port, flush=True)
    try:
        server._httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())


def make_problems(n: int, split: str = "train", *, prefix: str = "q", image_size: int = 16) -> list[dict]:
    """PROBLEM_SCHEMA rows whose question carries the pid where the fake server reads it."""
    import io

    from PIL import Image

    options = [["attract", "repel"], ["north", "south", "east"], ["solid", "liquid", "gas", "plasma"]]
    rows = []
    for i in range(n):
        pid = f"{prefix}{i:04d}"
        choices = options[i % len(options)]
        buf = io.BytesIO()
        Image.new("RGB", (image_size, image_size), ((i * 37) % 256, (i * 91) % 256, 128)).save(buf, format="PNG")
        rows.append({
            "pid": pid, "split": split, "question": f"[{pid}] Which option fits the picture?",
            "choices": choices, "answer": i % len(choices), "hint": f"Hint for {pid}.",
            "image": buf.getvalue(), "task": "closed choice", "grade": "grade5", "subject": "natural science",
            "topic": "physics", "category": "Magnets", "skill": "Predict magnetic forces",
            "lecture": f"Lecture text about magnets for {pid}.", "solution": f"Solution: the answer is {choices[i % len(choices)]}.",
            "caption": f"A picture for {pid}." if i % 5 else "",
        })
    return rows


def write_problems(path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from svrd.records import PROBLEM_SCHEMA

    pq.write_table(pa.Table.from_pylist(rows, schema=PROBLEM_SCHEMA), path)


def teach_cfg(**overrides):
    """A `teach` section as the library reads it (attributes named as in params.yaml)."""
    import types

    base = dict(backend="openai", model="fake-teacher", base_url=None, api_key_env="SVRD_TEST_TEACHER_KEY",
                concurrency=4, batch_size=2, samples=1, temperature=0.0, max_new_tokens=64, timeout_s=5.0,
                max_retries=3, on_disagree="substitute", on_contradiction="keep")
    base.update(overrides)
    return types.SimpleNamespace(**base)


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
STAGE = REPO / "stages" / "teach.py"


def make_stage_dir(root, train: list[dict], val: list[dict], **teach) -> None:
    """A working copy for stages/teach.py: params.yaml (the repo's, `teach` overridden) and the split tables."""
    from pathlib import Path

    import yaml

    root = Path(root)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["teach"].update(teach)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "data" / "split").mkdir(parents=True, exist_ok=True)
    write_problems(root / "data" / "split" / "train.parquet", train)
    write_problems(root / "data" / "split" / "val.parquet", val)
