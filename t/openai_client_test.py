#!/usr/bin/env python3
"""Drive ngx-gpu with the official `openai` Python client, unchanged.

usage: openai_client_test.py BASE_URL MODEL [EXPECTED_TEXT_JSON]

BASE_URL is the location's ".../v1".  With EXPECTED_TEXT_JSON (the
scripted model's script.json) the answers are checked word for word,
otherwise their shape only.  Prints "ok - NAME" or "not ok - NAME: why"
per check and ends with "N passed, N failed".
"""

import json
import sys
import traceback

passed = failed = 0


def check(name, fn):
    global passed, failed
    try:
        fn()
        print("ok - %s" % name)
        passed += 1
    except Exception as e:              # any failure is the test's
        print("not ok - %s: %s" % (name, e))
        traceback.print_exc(file=sys.stdout)
        failed += 1


def main():
    import openai

    base, model = sys.argv[1], sys.argv[2]
    text = None
    if len(sys.argv) > 3:
        with open(sys.argv[3], encoding="utf-8") as f:
            text = json.load(f)["text"]
    client = openai.OpenAI(base_url=base, api_key="none", max_retries=0,
                           timeout=60)
    msgs = [{"role": "system", "content": "You are brief."},
            {"role": "user", "content": "Say something."}]

    def same(got, want):
        if want is not None and got != want:
            raise AssertionError("%r != %r" % (got, want))
        if want is None and not isinstance(got, str):
            raise AssertionError("not a string: %r" % (got,))

    def models():
        ids = [m.id for m in client.models.list()]
        assert ids == [model], ids

    def completion():
        r = client.completions.create(model=model, prompt="x", max_tokens=40)
        assert r.object == "text_completion" and r.id.startswith("cmpl-")
        c = r.choices[0]
        same(c.text, text)
        assert c.finish_reason == ("stop" if text else c.finish_reason)
        assert r.usage.completion_tokens > 0
        assert r.usage.total_tokens == (r.usage.prompt_tokens
                                        + r.usage.completion_tokens)

    def completion_stream():
        parts, finish = [], None
        for ev in client.completions.create(model=model, prompt="x",
                                            max_tokens=40, stream=True):
            parts.append(ev.choices[0].text)
            finish = ev.choices[0].finish_reason or finish
        same("".join(parts), text)
        assert finish in ("stop", "length"), finish

    def completion_stop():
        r = client.completions.create(model=model, prompt="x", max_tokens=40,
                                      stop=["llama"] if text else ["e"])
        c = r.choices[0]
        if text:
            same(c.text, text[:text.index("llama")])
        assert "e" not in c.text or text, c.text
        assert c.finish_reason in ("stop", "length"), c.finish_reason

    def chat():
        r = client.chat.completions.create(model=model, messages=msgs,
                                           max_tokens=40)
        assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
        m = r.choices[0].message
        assert m.role == "assistant", m.role
        same(m.content, text)
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.prompt_tokens > 0

    def chat_parts():
        r = client.chat.completions.create(
            model=model, max_completion_tokens=3,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "one"},
                {"type": "text", "text": "two"}]}])
        assert r.usage.completion_tokens == 3 or r.choices[0].finish_reason \
            == "stop"

    def chat_stream():
        roles, parts, finish, usage = [], [], None, None
        stream = client.chat.completions.create(
            model=model, messages=msgs, max_tokens=40, stream=True,
            stream_options={"include_usage": True})
        for ev in stream:
            assert ev.object == "chat.completion.chunk"
            if ev.usage is not None:
                usage = ev.usage
            if not ev.choices:
                continue
            d = ev.choices[0].delta
            if d.role:
                roles.append(d.role)
            if d.content:
                parts.append(d.content)
            finish = ev.choices[0].finish_reason or finish
        assert roles == ["assistant"], roles
        same("".join(parts), text)
        assert finish in ("stop", "length"), finish
        assert usage is not None and usage.completion_tokens > 0

    def chat_stop_stream():
        stop = "\U0001f999 says" if text else "a"
        parts = []
        for ev in client.chat.completions.create(
                model=model, messages=msgs, max_tokens=40, stream=True,
                stop=[stop]):
            if ev.choices and ev.choices[0].delta.content:
                parts.append(ev.choices[0].delta.content)
        got = "".join(parts)
        if text:
            same(got, text[:text.index(stop)])
        assert stop not in got, got

    def bad_request():
        try:
            client.chat.completions.create(model=model, messages=[])
        except openai.BadRequestError as e:
            assert e.status_code == 400
            assert e.body["param"] == "messages", e.body
            return
        raise AssertionError("no BadRequestError")

    def unknown_model():
        try:
            client.chat.completions.create(model="gpt-none", messages=msgs)
        except openai.NotFoundError as e:
            assert e.body["code"] == "model_not_found", e.body
            return
        raise AssertionError("no NotFoundError")

    def completion_logprobs():
        raw = client.completions.with_raw_response.create(
            model=model, prompt="x", max_tokens=8, temperature=0, logprobs=3)
        r = raw.parse()
        lp, n = r.choices[0].logprobs, r.usage.completion_tokens

        # every object of the body has each key once (a parser keeps only
        # one value of a repeated key)
        def unique(pairs):
            keys = [k for k, _ in pairs]
            assert len(keys) == len(set(keys)), keys
            return dict(pairs)
        json.loads(raw.http_response.text, object_pairs_hook=unique)
        assert len(lp.tokens) == len(lp.token_logprobs) == n, lp
        assert len(lp.top_logprobs) == len(lp.text_offset) == n, lp
        assert all(isinstance(t, str) for t in lp.tokens), lp.tokens
        for t, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            # 3 alternatives and the chosen token; fewer only where tokens
            # that end inside a character share the text U+FFFD
            assert v <= 0 and len(top) <= 4, (t, v, top)
            assert len(top) >= 3 or "\ufffd" in "".join(top), (t, v, top)
            assert abs(max(top.values()) - v) < 1e-6, (t, v, top)
        # a token that ends inside a character shows U+FFFD for its bytes
        assert lp.text_offset[0] == 0 and lp.text_offset == sorted(
            lp.text_offset), lp.text_offset
        for t in lp.tokens:
            assert "\ufffd" in t or t in r.choices[0].text, (t, r)

    def completion_logprobs_stream():
        toks = []
        for ev in client.completions.create(model=model, prompt="x",
                                            max_tokens=8, temperature=0,
                                            logprobs=2, stream=True):
            if ev.choices[0].logprobs is not None:
                toks += ev.choices[0].logprobs.tokens
        r = client.completions.create(model=model, prompt="x", max_tokens=8,
                                      temperature=0, logprobs=2)
        assert toks == r.choices[0].logprobs.tokens, (toks, r)

    def chat_logprobs():
        r = client.chat.completions.create(model=model, messages=msgs,
                                           max_tokens=8, temperature=0,
                                           logprobs=True, top_logprobs=2)
        content = r.choices[0].logprobs.content
        assert len(content) == r.usage.completion_tokens, content
        for e in content:
            assert isinstance(e.token, str) and e.logprob <= 0, e
            assert bytes(e.bytes).decode("utf-8", "replace") == e.token \
                or "\ufffd" in e.token, e
            assert len(e.top_logprobs) == 2, e
            assert e.top_logprobs[0].logprob == e.logprob, e
            assert e.top_logprobs[1].logprob <= e.logprob, e

    def chat_logprobs_stream():
        got = []
        for ev in client.chat.completions.create(
                model=model, messages=msgs, max_tokens=8, temperature=0,
                logprobs=True, top_logprobs=1, stream=True,
                stream_options={"include_usage": True}):
            if ev.choices and ev.choices[0].logprobs is not None:
                got += ev.choices[0].logprobs.content or []
            if ev.usage is not None:
                usage = ev.usage
        assert len(got) == usage.completion_tokens, (got, usage)
        assert all(len(e.top_logprobs) == 1 for e in got), got

    def sampling_fields():
        a = client.chat.completions.create(
            model=model, messages=msgs, max_tokens=8, temperature=1.5,
            seed=7, presence_penalty=0.5, frequency_penalty=0.5,
            extra_body={"top_k": 1})
        b = client.chat.completions.create(
            model=model, messages=msgs, max_tokens=8, temperature=0,
            presence_penalty=0.5, frequency_penalty=0.5)
        same(a.choices[0].message.content, b.choices[0].message.content)

    def bad_top_logprobs():
        try:
            client.chat.completions.create(model=model, messages=msgs,
                                           logprobs=True, top_logprobs=21)
        except openai.BadRequestError as e:
            assert e.body["param"] == "top_logprobs", e.body
            return
        raise AssertionError("no BadRequestError")

    for name, fn in [("models.list", models), ("completions", completion),
                     ("completions stream", completion_stream),
                     ("completions stop", completion_stop),
                     ("chat", chat), ("chat text parts", chat_parts),
                     ("chat stream with usage", chat_stream),
                     ("chat stream with stop", chat_stop_stream),
                     ("400 as BadRequestError", bad_request),
                     ("404 as NotFoundError", unknown_model),
                     ("completions logprobs", completion_logprobs),
                     ("completions logprobs stream",
                      completion_logprobs_stream),
                     ("chat logprobs", chat_logprobs),
                     ("chat logprobs stream", chat_logprobs_stream),
                     ("top_k and penalties", sampling_fields),
                     ("top_logprobs 21 as BadRequestError",
                      bad_top_logprobs)]:
        check(name, fn)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
