"""A local stand-in for the OpenAI Files and Batches endpoints, on 127.0.0.1, for the openai client.

It answers each chat request from a truth table keyed by the raw title (the demo catalog's ground
truth), so answers are right unless a test scripts a fault. Knobs a test turns:
    http_faults[(method, path)]  responses (status, headers) returned before the real one: 500, 429...
    answer_faults[title]         per-attempt faults for one product: malformed, schema, error, refusal,
                                 wrong_color (None = answer right)
    batch_modes                  per created batch, in order: complete, expire (half done), fail
    create_faults                per batches.create, in order: "500" or "drop" after the batch is created
                                 (the answer is lost; the batch exists and will run)
    max_open_batches             a batch created while this many are open fails as a whole
                                 (token_limit_exceeded, the enqueued-token limit of a small tier)
    late_file_ids                polls during which a finished batch shows null output/error file ids
    hold                         batches stay in_progress while True (a test cancels or kills meanwhile)
It records every call, every batch created, how often each custom_id was sent (in a created batch),
billed (its request ran: answered or failed on its own) and answered.
"""
from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

COLUMNS = ["category", "style", "material", "color", "pattern"]


class FakeOpenAI:
    def __init__(self, truth: dict[str, dict], api_key: str, polls_to_finish: int = 2):
        self.truth, self.api_key, self.polls_to_finish = truth, api_key, polls_to_finish
        self.http_faults: dict[tuple[str, str], list[tuple[int, dict]]] = defaultdict(list)
        self.answer_faults: dict[str, list[str | None]] = {}
        self.batch_modes: list[str] = []
        self.create_faults: list[str] = []
        self.max_open_batches: int | None = None
        self.late_file_ids = 0
        self.hold = False
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.calls: Counter = Counter()
        self.sent: Counter = Counter()  # custom_id -> times it was in a created batch
        self.billed: Counter = Counter()  # custom_id -> times its request ran
        self.answered: Counter = Counter()  # custom_id -> valid answers delivered
        self.sent_after_answer: list[str] = []
        self.bad_auth = 0
        self._attempts: Counter = Counter()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def uploads(self) -> list[bytes]:
        return [f["content"] for f in self.files.values() if f["purpose"] == "batch"]

    # endpoints
    def handle(self, method: str, path: str, query: dict, headers, body: bytes) -> tuple[int, dict, bytes]:
        with self._lock:
            self.calls[(method, _route(path))] += 1
            faults = self.http_faults[(method, _route(path))]
            if faults:
                status, extra = faults.pop(0)
                return status, extra, json.dumps({"error": {"message": f"injected {status}", "type": "server_error"}}).encode()
            if headers.get("Authorization") != f"Bearer {self.api_key}":
                self.bad_auth += 1
                return 401, {}, json.dumps({"error": {"message": "bad key", "type": "invalid_request_error"}}).encode()
            if method == "POST" and path == "/v1/files":
                return self._upload(headers, body)
            if method == "GET" and (m := re.fullmatch(r"/v1/files/([\w-]+)/content", path)):
                return 200, {"Content-Type": "application/octet-stream"}, self.files[m[1]]["content"]
            if method == "POST" and path == "/v1/batches":
                created = self._create(json.loads(body))
                fault = self.create_faults.pop(0) if self.create_faults else None
                if fault == "500":
                    return 500, {}, b'{"error": {"message": "gateway error after the batch was created"}}'
                return (None, {}, b"") if fault == "drop" else created
            if method == "GET" and path == "/v1/batches":
                return self._list(query)
            if method == "GET" and (m := re.fullmatch(r"/v1/batches/([\w-]+)", path)):
                return self._retrieve(m[1])
            if method == "POST" and (m := re.fullmatch(r"/v1/batches/([\w-]+)/cancel", path)):
                batch = self.batches[m[1]]
                if batch["status"] in ("validating", "in_progress"):
                    batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
                return _json(batch)
            return 404, {}, b'{"error": {"message": "no such route"}}'

    def _upload(self, headers, body: bytes) -> tuple[int, dict, bytes]:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
        fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        content = fields["file"].get_payload(decode=True)
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = {"content": content, "purpose": fields["purpose"].get_content().strip(),
                               "filename": fields["file"].get_filename()}
        return _json({"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                      "filename": self.files[file_id]["filename"], "purpose": self.files[file_id]["purpose"],
                      "status": "processed"})

    def _create(self, request: dict) -> tuple[int, dict, bytes]:
        batch_id = f"batch_{next(self._ids)}"
        lines = [json.loads(raw) for raw in self.files[request["input_file_id"]]["content"].splitlines() if raw.strip()]
        for line in lines:
            if self.answered[line["custom_id"]]:
                self.sent_after_answer.append(line["custom_id"])
            self.sent[line["custom_id"]] += 1
        mode = self.batch_modes.pop(0) if self.batch_modes else "complete"
        open_now = sum(b["status"] in ("validating", "in_progress", "finalizing") for b in self.batches.values())
        if self.max_open_batches is not None and open_now >= self.max_open_batches:
            mode = "token_limit"
        self.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": request["endpoint"], "input_file_id": request["input_file_id"],
            "completion_window": request["completion_window"], "status": "validating", "created_at": int(time.time()),
            "metadata": request.get("metadata"), "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "output_file_id": None, "error_file_id": None, "errors": None, "_lines": lines, "_mode": mode, "_polls": 0,
            "_late": self.late_file_ids}
        return _json(self.batches[batch_id])

    def _list(self, query: dict) -> tuple[int, dict, bytes]:
        ordered = sorted(self.batches.values(), key=lambda b: int(b["id"].split("_")[1]), reverse=True)
        if "after" in query:
            ordered = ordered[[b["id"] for b in ordered].index(query["after"][0]) + 1:]
        limit = int(query.get("limit", ["20"])[0])
        page = ordered[:limit]
        return _json({"object": "list", "data": [_public(b) for b in page], "has_more": len(ordered) > limit,
                      "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})

    def _retrieve(self, batch_id: str) -> tuple[int, dict, bytes]:
        batch = self.batches[batch_id]
        batch["_polls"] += 1
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        elif batch["status"] == "cancelling":
            self._finish(batch, "cancelled", answered=len(batch["_lines"]) // 2)
        elif batch["status"] == "in_progress" and not self.hold and batch["_polls"] > self.polls_to_finish:
            if batch["_mode"] in ("fail", "token_limit"):
                batch["status"], batch["failed_at"] = "failed", int(time.time())
                code, message = (("token_limit_exceeded", "Enqueued token limit reached for gpt-4o")
                                 if batch["_mode"] == "token_limit" else
                                 ("invalid_request", "injected: the input file failed validation"))
                batch["errors"] = {"object": "list", "data": [{"code": code, "message": message, "line": None}]}
            elif batch["_mode"] == "expire":
                self._finish(batch, "expired", answered=len(batch["_lines"]) // 2, rest_code="batch_expired")
            else:
                self._finish(batch, "completed", answered=len(batch["_lines"]))
        elif batch["status"] in ("completed", "expired", "cancelled", "failed") and batch["_late"] > 0:
            batch["_late"] -= 1
        if batch["_late"] > 0 and batch["status"] in ("completed", "expired", "cancelled"):
            return _json({**_public(batch), "output_file_id": None, "error_file_id": None})
        return _json(_public(batch))

    def _finish(self, batch: dict, status: str, answered: int, rest_code: str | None = None) -> None:
        """Answer the first `answered` lines; the rest go to the error file with `rest_code`, or nowhere."""
        output, errors = [], []
        for n, line in enumerate(batch["_lines"]):
            custom_id = line["custom_id"]
            if n >= answered:
                if rest_code:
                    errors.append({"id": f"req_{n}", "custom_id": custom_id, "response": None,
                                   "error": {"code": rest_code, "message": "the batch expired before this request ran"}})
                continue
            title = re.search(r"Marketplace title: (.*)", line["body"]["messages"][1]["content"][0]["text"])[1]
            self._attempts[custom_id] += 1
            self.billed[custom_id] += 1
            faults = self.answer_faults.get(title, [])
            fault = faults[self._attempts[custom_id] - 1] if self._attempts[custom_id] <= len(faults) else None
            if fault == "error":
                errors.append({"id": f"req_{n}", "custom_id": custom_id,
                               "response": {"status_code": 500, "request_id": f"r{n}",
                                            "body": {"error": {"message": "injected server error", "type": "server_error"}}},
                               "error": None})
                continue
            output.append({"id": f"req_{n}", "custom_id": custom_id, "error": None, "response": {
                "status_code": 200, "request_id": f"r{n}", "body": self._completion(line["body"], title, fault)}})
            if fault in (None, "wrong_color"):
                self.answered[custom_id] += 1
        batch["status"], batch[f"{status}_at"] = status, int(time.time())
        batch["request_counts"].update(completed=len(output), failed=len(errors))
        for kind, rows in (("output_file_id", output), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{next(self._ids)}"
                self.files[file_id] = {"content": "".join(json.dumps(r) + "\n" for r in rows).encode(),
                                       "purpose": "batch_output", "filename": f"{batch['id']}_{kind}.jsonl"}
                batch[kind] = file_id

    def _completion(self, body: dict, title: str, fault: str | None) -> dict:
        truth = self.truth[title]
        answer = {"clean_title": truth["title_true"], **{c: truth.get(f"{c}_true") for c in COLUMNS}}
        if fault == "wrong_color":
            answer["color"] = "Purple" if answer["color"] != "Purple" else "Orange"
        content, refusal = json.dumps(answer), None
        if fault == "malformed":
            content = content[: len(content) // 2]  # cut off mid-object, as with finish_reason=length
        elif fault == "schema":
            content = json.dumps({"title": truth["title_true"], "colour": answer["color"]})
        elif fault == "refusal":
            content, refusal = None, "I can't help with that."
        assert body["response_format"]["json_schema"]["strict"] is True
        return {"id": "chatcmpl-x", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content, "refusal": refusal}}],
                "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160}}


def _route(path: str) -> str:
    """/v1/batches/batch_3 -> /v1/batches/{id}: faults and counts per endpoint."""
    return re.sub(r"/(file|batch)[-_][\w-]+", "/{id}", path)


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _json(data: dict) -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(data).encode()


def _handler(fake: FakeOpenAI):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            url = urlparse(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, headers, payload = fake.handle(self.command, url.path, parse_qs(url.query), self.headers, body)
            if status is None:  # the connection drops before an answer
                self.close_connection = True
                return
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

        def log_message(self, *args) -> None:
            pass

    return Handler
