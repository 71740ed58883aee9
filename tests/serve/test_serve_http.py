"""`t2 serve` end to end: the official `openai` client against a real server process on 127.0.0.1
with a tiny random Llama and two experts (STEM, Humanities)."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fixtures import Server, build_model_and_experts  # noqa: E402

MSG = [{"role": "user", "content": "What is 12 times 7?"}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    folder, experts = build_model_and_experts(root)
    args = ["--model", str(folder), "--experts", *map(str, experts)]
    srv = Server(args + ["--max_wait_ms", "30"], root / "home", wait=False)
    small = Server(args + ["--max_batch_size", "1", "--max_queue", "1"], root / "home", wait=False)  # 429, SIGTERM
    try:
        srv.wait()
        small.wait()
        yield srv, folder, experts, root, small
    finally:
        srv.stop(signal.SIGKILL)
        small.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def client(setup):
    return openai.OpenAI(base_url=setup[0].url, api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tok(setup):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(setup[1]))


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def chat(client, model="t2", messages=MSG, max_tokens=6, **kw):
    return client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0, **kw)


def test_models_list(client, setup):
    ids = [m.id for m in client.models.list()]
    assert ids == [str(setup[1]), "STEM", "Humanities", "t2", "t2:prompt", "t2:uniform"]


def test_chat_completion_usage_and_route(client, tok):
    raw = client.chat.completions.with_raw_response.create(model="t2", messages=MSG, max_tokens=5, temperature=0)
    r = raw.parse()
    text = tok.apply_chat_template(MSG, add_generation_prompt=True, tokenize=False)
    assert r.usage.prompt_tokens == len(tok(text, add_special_tokens=False)["input_ids"])  # the template has BOS
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5
    route = r.model_extra["t2"]
    assert route["strategy"] == "prompt" and route["decision"] in ("STEM", "Humanities", "base")
    assert set(route["alpha"]) == {"STEM", "Humanities"}
    assert route["decision"] not in r.choices[0].message.content or route["decision"] == "base"
    assert raw.headers["x-t2-decision"] == route["decision"]
    assert json.loads(raw.headers["x-t2-alpha"]) == route["alpha"]


def test_expert_and_base_models_route_fixed(client, setup):
    stem = chat(client, "STEM").model_extra["t2"]
    assert stem["decision"] == "STEM" and stem["alpha"] == {"STEM": 1.0, "Humanities": 0.0} and stem["strategy"] is None
    base = chat(client, str(setup[1])).model_extra["t2"]
    assert base["decision"] == "base" and base["alpha"] == {"STEM": 0.0, "Humanities": 0.0}
    uni = chat(client, "t2:uniform").model_extra["t2"]
    assert uni["decision"] == "mixture" and uni["alpha"] == {"STEM": 0.5, "Humanities": 0.5}


def test_request_alpha(client):
    own = chat(client, extra_body={"alpha": {"STEM": 1.0}})
    assert own.model_extra["t2"]["decision"] == "STEM"
    assert own.choices[0].message.content == chat(client, "STEM").choices[0].message.content
    mixed = chat(client, extra_body={"alpha": {"STEM": 0.5, "Humanities": 0.5}})
    assert mixed.choices[0].message.content == chat(client, "t2:uniform").choices[0].message.content
    texts = {chat(client, m).choices[0].message.content for m in ("STEM", "Humanities")}
    assert len(texts) == 2  # the experts visibly differ, so the equalities above say something


def test_completion(client, tok):
    r = client.completions.create(model="Humanities", prompt="The capital of France is", max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens == len(tok("The capital of France is")["input_ids"])
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"
    assert r.model_extra["t2"]["decision"] == "Humanities"


@pytest.mark.parametrize("model", ["t2", "STEM"])
def test_stream_reassembles(client, model):
    full = chat(client, model, max_tokens=12)
    parts, usage, route = [], None, None
    for ch in chat(client, model, max_tokens=12, stream=True, stream_options={"include_usage": True}):
        route = route or (ch.model_extra or {}).get("t2")
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            parts.append(c.delta.content or "")
    assert "".join(parts) == full.choices[0].message.content
    assert usage.completion_tokens == full.usage.completion_tokens and usage.prompt_tokens == full.usage.prompt_tokens
    assert route == {**full.model_extra["t2"], "pass1_seconds": route["pass1_seconds"]}
    text = "".join(c.text for c in client.completions.create(model=model, prompt="One two three", max_tokens=8,
                                                              temperature=0, stream=True) for c in c.choices)
    assert text == client.completions.create(model=model, prompt="One two three", max_tokens=8,
                                             temperature=0).choices[0].text


def test_stop_and_seed(client):
    full = chat(client, "STEM", max_tokens=12).choices[0].message.content
    stop = full[3:6]
    cut = chat(client, "STEM", max_tokens=12, stop=[stop])
    assert cut.choices[0].message.content == full[: full.find(stop)] and cut.choices[0].finish_reason == "stop"
    a, b = (client.chat.completions.create(model="STEM", messages=MSG, max_tokens=8, temperature=1.0, seed=7, n=2)
            for _ in range(2))
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len(a.choices) == 2 and a.choices[0].message.content != a.choices[1].message.content  # seed, seed + 1
    assert a.usage.completion_tokens <= 16


def test_echo_logprobs_match_the_model(client, setup, tok):
    """lm-eval local-completions' loglikelihood request, checked against the model run in this process."""
    import torch

    from transformer_squared.experts.adapted import load_adapted

    ids = [tok("The sky is")["input_ids"], tok("Two plus two is four")["input_ids"]]
    r = client.completions.create(model="STEM", prompt=ids, max_tokens=1, temperature=0, echo=True, logprobs=1,
                                  seed=1234)
    am = load_adapted(str(setup[1]), experts=setup[2], device="cpu")
    with torch.no_grad(), am.svf.merged(am.z(torch.tensor([1.0, 0.0]))):
        for choice, x in zip(sorted(r.choices, key=lambda c: c.index), ids):
            logp = torch.log_softmax(am.model(torch.tensor([x])).logits[0].double(), -1)  # (T, V)
            want = [logp[j - 1, x[j]].item() for j in range(1, len(x))]
            got = choice.logprobs.token_logprobs
            assert got[0] is None and len(got) == len(x) + 1
            assert got[1 : len(x)] == pytest.approx(want, abs=1e-4)
            greedy = int(logp[-1].argmax())
            assert choice.logprobs.tokens[len(x)] == tok.decode([greedy])
            assert max(choice.logprobs.top_logprobs[len(x)].values()) == pytest.approx(logp[-1].max().item(), abs=1e-4)


def test_concurrent_mixed_batches_match_one_at_a_time(client, setup):
    """32 greedy requests over 4 mixtures: the same texts alone and all at once (mixed batches)."""
    mixtures = [("STEM", None), ("Humanities", None), (str(setup[1]), None), ("t2", {"STEM": 0.3, "Humanities": 0.7})]
    reqs = [(mixtures[i % 4], [{"role": "user", "content": f"Question {i}: name a number."}], 4 + i % 5)
            for i in range(32)]

    def one(r):
        (model, alpha), messages, n = r
        return chat(client, model, messages, n, extra_body={"alpha": alpha} if alpha else None).choices[0].message.content

    alone = [one(r) for r in reqs]
    before = setup[0].health()
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(one, reqs))
    assert together == alone
    after = setup[0].health()
    assert after["mixed_batches"] > before["mixed_batches"]  # the concurrent run did mix experts in one batch
    assert after["joined"] > before["joined"]  # and requests took the slots that finished rows left


@pytest.mark.parametrize("path, body, param", [
    ("chat/completions", {"model": "nope", "messages": MSG}, "model"),
    ("chat/completions", {"model": "t2", "messages": []}, "messages"),
    ("chat/completions", {"model": "t2", "messages": [{"role": "user", "content": ""}]}, "messages"),
    ("chat/completions", {"model": "t2", "messages": MSG, "max_tokens": 5000}, "max_tokens"),
    ("chat/completions", {"model": "t2", "messages": MSG, "max_completion_tokens": 5000}, "max_completion_tokens"),
    ("chat/completions", {"model": "t2", "messages": MSG, "temperature": "hot"}, "temperature"),
    ("chat/completions", {"model": "t2", "messages": MSG, "max_tokens": 2.5}, "max_tokens"),
    ("chat/completions", {"model": "t2", "messages": "hello"}, "messages"),
    ("chat/completions", {"model": "t2", "messages": MSG, "foo": 1}, "foo"),
    ("chat/completions", {"model": "t2", "messages": MSG, "alpha": {"Law": 1.0}}, "alpha"),
    ("chat/completions", {"model": "STEM", "messages": MSG, "alpha": {"STEM": 1.0}}, "alpha"),
    ("chat/completions", {"model": "t2", "messages": MSG, "n": 100}, "n"),
    ("chat/completions", {"model": "t2", "messages": MSG, "tools": [{"type": "function"}]}, "tools"),
    ("completions", {"model": "t2", "prompt": "hi", "max_tokens": 2000}, "max_tokens"),
    ("completions", {"model": "t2", "prompt": [[1, 2], [10**9]]}, "prompt"),
    ("completions", {"model": "t2", "prompt": [5] * 1100, "max_tokens": 0}, "prompt"),
    ("completions", {"model": "t2", "prompt": []}, "prompt"),
    ("completions", {"model": "t2", "prompt": "hi", "logprobs": "yes"}, "logprobs"),
    ("completions", {"model": "t2", "prompt": "hi", "echo": True, "bar": None}, "bar"),
])
def test_bad_requests_get_400_naming_the_field(setup, path, body, param):
    status, err = post(f"{setup[0].url}/{path}", body)
    assert status == 400, err
    assert err["error"]["param"] == param and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"]


def test_unknown_model_via_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "gpt-4")
    assert e.value.body["param"] == "model" and "gpt-4" in e.value.body["message"]


def test_disconnect_stops_generation(client, setup):
    before = setup[0].health()
    stream = chat(client, "STEM", max_tokens=900, stream=True)
    next(iter(stream))
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 20
    while setup[0].health()["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.2)
    after = setup[0].health()
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["tokens"] - before["tokens"] < 900  # it stopped well before its budget


def test_full_queue_429_and_sigterm_drains(setup):
    """max_batch_size 1, max_queue 1: a burst gets 429s; SIGTERM lets the accepted requests finish, then exits."""
    srv = setup[4]
    try:
        body = {"model": "STEM", "messages": MSG, "max_tokens": 40, "temperature": 0}
        results: list = [None] * 6

        def send(i):
            results[i] = post(f"{srv.url}/chat/completions", body)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
            time.sleep(0.02)
        time.sleep(0.3)  # the burst is in: one running, one waiting, the rest refused
        code, out = srv.stop(signal.SIGTERM)
        for t in threads:
            t.join(30)
        statuses = [r[0] for r in results]
        assert 429 in statuses and 200 in statuses, statuses
        for status, r in results:
            if status == 429:
                assert r["error"]["type"] == "rate_limit_error"
            else:
                assert status == 200 and r["usage"]["completion_tokens"] == 40, r
        assert code == 0 and "Traceback" not in out, out
    finally:
        srv.stop(signal.SIGKILL)


def test_lm_eval_local_completions_scores_multiple_choice(setup, tmp_path):
    """lm-eval's `local-completions` model against the server: each choice's log-likelihood equals the
    expert's, computed here by one forward pass with the expert merged."""
    import torch

    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("tenacity")  # lm-eval's API models need it (lm-eval[api])
    from lm_eval.tasks import TaskManager

    from transformer_squared.experts.adapted import load_adapted

    questions = [("2 + 2 =", ["3", "4", "5"], 1), ("The sky is", ["blue", "green", "loud"], 0)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in questions))
    (tmp_path / "t2_serve_mc.yaml").write_text(
        f"task: t2_serve_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: \"{{question}}\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n")
    args = (f"model=STEM,base_url={setup[0].url}/completions,tokenizer={setup[1]},tokenizer_backend=huggingface,"
            "num_concurrent=2,max_retries=1,add_bos_token=True")  # as the model was trained: BOS first
    res = lm_eval.simple_evaluate(model="local-completions", model_args=args, tasks=["t2_serve_mc"],
                                  task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
                                  log_samples=True)
    am = load_adapted(str(setup[1]), experts=setup[2], device="cpu")
    tok = am.tokenizer
    by_doc = {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in res["samples"]["t2_serve_mc"]}
    with torch.no_grad(), am.svf.merged(am.z(torch.tensor([1.0, 0.0]))):
        for d, (q, choices, _) in enumerate(questions):
            for c, got in zip(choices, by_doc[d]):
                ctx, full = tok.encode(q), tok.encode(q + " " + c)
                logp = torch.log_softmax(am.model(torch.tensor([full])).logits[0].double(), -1)  # (T, V)
                want = sum(float(logp[i - 1, full[i]]) for i in range(len(ctx), len(full)))
                assert got == pytest.approx(want, abs=1e-3)
