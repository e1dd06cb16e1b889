#!/usr/bin/env python3
"""End-to-end test: start `hy run` on a fixture model and drive it with the official
`openai` Python package.

Usage: tests/openai_e2e.py HY_BINARY MODEL_PATH
(.ci/server-e2e.sh builds hy, makes a venv with `openai` and runs this.)

Checks: /v1/models; a chat completion; a streamed chat completion (equal to the
non-streamed one under greedy decoding); a completion; bad requests (invalid JSON, unknown
model, missing messages, too many tokens) answered with 4xx and the OpenAI error shape;
16 concurrent streamed requests all completing. Exits non-zero on the first failure.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import openai


def start_server(hy, model):
    proc = subprocess.Popen(
        [hy, "run", model, "--port", "0", "--context", "512", "--max-concurrency", "8"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    urls = [w for w in line.split() if w.startswith("http://")]
    if not urls:
        proc.kill()
        sys.exit(f"FAIL: no address in the ready line {line!r}")
    print(f"server: {line.strip()}", file=sys.stderr)
    return proc, urls[0]


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}", file=sys.stderr)


def expect_error(fn, status, what):
    try:
        fn()
    except openai.APIStatusError as e:
        body = e.response.json()
        err = body.get("error", {})
        shape = all(k in err for k in ("message", "type", "param", "code")) and err["message"]
        check(e.status_code == status and shape, f"{what} -> {status} with the OpenAI error shape")
        return
    raise AssertionError(f"{what}: no error raised")


def raw_post(base, path, data):
    """POST raw bytes (the openai client cannot send invalid JSON)."""
    req = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def run_checks(base):
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)
    models = client.models.list()
    ids = [m.id for m in models.data]
    check(len(ids) == 1, f"/v1/models lists one model ({ids})")
    model = ids[0]
    msgs = [{"role": "user", "content": "Tell me a story."}]

    chat = client.chat.completions.create(model=model, messages=msgs, max_tokens=16, temperature=0)
    text = chat.choices[0].message.content
    check(chat.object == "chat.completion" and isinstance(text, str), "chat completion")
    check(chat.choices[0].finish_reason in ("stop", "length"), "chat finish_reason")
    check(chat.usage.completion_tokens <= 16 and chat.usage.prompt_tokens > 0, "chat usage")

    stream = client.chat.completions.create(
        model=model, messages=msgs, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    check("".join(pieces) == text, "streamed chat text equals the non-streamed text (greedy)")
    check(finish == chat.choices[0].finish_reason, "streamed finish_reason")
    check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens, "stream usage")

    comp = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0,
                                     logprobs=2)
    check(comp.object == "text_completion" and isinstance(comp.choices[0].text, str), "completion")
    check(len(comp.choices[0].logprobs.tokens) == comp.usage.completion_tokens
          or comp.choices[0].finish_reason == "stop", "completion logprobs")

    seeded = [client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=1.0,
                                             seed=1234).choices[0].message.content for _ in range(2)]
    check(seeded[0] == seeded[1], "same seed, same sampled text")

    status, body = raw_post(base, "/chat/completions", b"{not json")
    err = json.loads(body).get("error", {})
    check(status == 400 and "message" in err and "type" in err, "invalid JSON -> 400 with the error shape")
    expect_error(lambda: client.chat.completions.create(model="no-such-model", messages=msgs), 404,
                 "unknown model")
    expect_error(lambda: client.chat.completions.create(model=model, messages=[]), 400, "empty messages")
    expect_error(lambda: client.post("/chat/completions", body={"model": model}, cast_to=object), 400,
                 "missing messages")
    expect_error(lambda: client.chat.completions.create(model=model, messages=msgs, max_tokens=1_000_000),
                 413, "too many tokens")

    def one(i):
        s = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Request {i}"}],
            max_tokens=12, temperature=0.8, seed=i, stream=True,
        )
        fin = None
        for chunk in s:
            for c in chunk.choices:
                fin = c.finish_reason or fin
        return fin

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        finishes = list(pool.map(one, range(16)))
    check(all(f in ("stop", "length") for f in finishes), f"16 concurrent streams completed ({finishes})")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    proc, base = start_server(sys.argv[1], sys.argv[2])
    try:
        run_checks(base)
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print("openai e2e: all checks passed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NO_COLOR", "1")
    sys.exit(main())
