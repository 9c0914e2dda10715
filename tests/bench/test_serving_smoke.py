"""`seedance bench serving` against a real `seedance serve` on the built-in model: the figures it reports are
the ones the server produced (every request exactly max_tokens with ignore_eos, prompts of exactly the asked
length, memory found by port), and the CLI's options, prompts and JSON behave. Sane output, not speed."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from seedance.bench.server_process import launch
from seedance.bench.serving import Slo, Target
from seedance.bench.serving_dataset import jsonl_prompts, load_tokenizer, random_prompts
from seedance.bench.serving_run import ServingOptions, run_serving
from seedance.cli import app
from seedance.models.loader import BUILTIN_MODEL_DIR

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


class _Console:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, *args, **_kw) -> None:
        self.lines.append(" ".join(str(a) for a in args))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = launch({"max_num_seqs": 8}, tmp_path_factory.mktemp("serving") / "server.log")
    yield srv
    srv.stop()


def _check_level(row: dict, requests: int, max_tokens: int) -> None:
    assert row["requests"] == row["completed"] == requests and row["errors"] == 0, row["error_examples"]
    assert row["short_outputs"] == 0 and row["output_tokens"] == requests * max_tokens
    assert row["output_tok_s"] == pytest.approx(row["output_tokens"] / row["duration_s"])
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        d = row[key]
        assert 0 < d["p50"] <= d["p90"] <= d["p99"], (key, d)
    assert row["ttft_ms"]["p99"] <= row["e2e_ms"]["p99"]
    # TPOT is the mean gap after the first token: at most the whole request's time over its tokens
    assert row["tpot_ms"]["p50"] * (max_tokens - 1) <= row["e2e_ms"]["p99"]


def test_bench_serving_against_seedance(server, tmp_path):
    output, plots = tmp_path / "serving.json", tmp_path / "plots"
    console = _Console()
    report = run_serving(ServingOptions(base_url=f"{server.http}/v1", concurrency="1,4", rounds=2, prompt_tokens=24,
                                        max_tokens=12, warmup=1, server_port=server.port, label="ours",
                                        output=str(output), plots=str(plots)), console)
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    assert "NaN" not in output.read_text()
    assert report["model"] == "seedance-tiny" and report["label"] == "ours"
    assert [r["concurrency"] for r in report["results"]] == [1, 4]
    for row, c in zip(report["results"], (1, 4), strict=True):
        _check_level(row, 2 * c, 12)
        assert row["prompt_tokens_mean"] == 24  # token-id prompts: exactly the asked length
        assert row["server_memory"]["rss_mib"] > 50 and row["server_memory"]["pss_mib"] > 0
    assert report["server_memory_idle"]["rss_mib"] > 50  # found by its port
    if HAVE_MATPLOTLIB:
        assert (plots / "serving.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_serving_chat_poisson_and_goodput(server, tmp_path):
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text('{"messages": [{"role": "user", "content": "And God said"}]}\n'
                       '{"prompt": "In the beginning"}\n')
    common = dict(base_url=f"{server.http}/v1", request_rate="20", num_prompts=6, max_tokens=5, warmup=0,
                  dataset=str(dataset), output=None)
    lax = run_serving(ServingOptions(endpoint="chat", slo="ttft=60000,tpot=60000", **common), _Console())
    row = lax["results"][0]
    _check_level(row, 6, 5)
    assert row["rate"] == 20 and row["concurrency"] is None
    assert row["goodput_req_s"] == pytest.approx(row["requests_per_s"]) and row["slo_met_fraction"] == 1
    strict = run_serving(ServingOptions(slo="ttft=0.001", **common), _Console())["results"][0]
    assert strict["completed"] == 6 and strict["goodput_req_s"] == 0 and strict["slo_met_fraction"] == 0


def test_bench_serving_sends_the_sampling_it_is_given(server):
    report = run_serving(ServingOptions(base_url=f"{server.http}/v1", concurrency="2", max_tokens=6, warmup=0,
                                        prompt_tokens=8, temperature=1.0, top_p=0.9, top_k=20, output=None),
                         _Console())
    _check_level(report["results"][0], 2, 6)
    assert report["settings"]["sampling"] == {"temperature": 1.0, "top_p": 0.9, "top_k": 20}
    url, body = Target("http://x/v1", "m", "chat", 4, temperature=0.7, extra_body={"top_p": 0.5}).request(
        random_prompts(load_tokenizer(BUILTIN_MODEL_DIR), 1, 4, seed=0)[0])
    assert url == "http://x/v1/chat/completions" and body["temperature"] == 0.7 and body["top_p"] == 0.5
    greedy = run_serving(ServingOptions(base_url=f"{server.http}/v1", concurrency="1", max_tokens=2, warmup=0,
                                        prompt_tokens=8, output=None), _Console())
    assert greedy["settings"]["sampling"] == {"temperature": 0.0}  # the default: greedy, nothing else sent


def test_bench_serving_counts_errors(server):
    # a max_tokens the server refuses (over its limit) is an error per request, not a crash of the run
    report = run_serving(ServingOptions(base_url=f"{server.http}/v1", concurrency="2", max_tokens=10**6, warmup=0,
                                        output=None), _Console())
    row = report["results"][0]
    assert row["errors"] == row["requests"] == 2 and row["completed"] == 0
    assert row["error_examples"] and row["error_examples"][0].startswith("HTTP 400")
    assert row["ttft_ms"]["p50"] is None and row["output_tok_s"] == 0


def test_random_prompts_are_reproducible_distinct_and_ordinary():
    tok = load_tokenizer(BUILTIN_MODEL_DIR)
    a, b = random_prompts(tok, 5, 64, seed=3), random_prompts(tok, 5, 64, seed=3)
    assert [p.token_ids for p in a] == [p.token_ids for p in b]
    assert [p.token_ids for p in a] != [p.token_ids for p in random_prompts(tok, 5, 64, seed=4)]
    assert len({tuple(p.token_ids) for p in a}) == 5 and all(len(p.token_ids) == 64 for p in a)
    special = set(tok.get_added_tokens_decoder())
    assert special and not special & {t for p in a for t in p.token_ids}
    assert a[0].text == tok.decode(a[0].token_ids)


def test_jsonl_and_slo_parsing(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "max_tokens": 3}\n\n{"messages": [{"role": "user", "content": "b"}]}\n')
    prompts = jsonl_prompts(path, 3)
    assert [p.completions_prompt() for p in prompts] == ["a", "b", "a"] and prompts[0].max_tokens == 3
    assert prompts[1].chat_messages() == [{"role": "user", "content": "b"}]
    path.write_text('{"text": "no"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:1"):
        jsonl_prompts(path, 1)
    assert Slo.parse("ttft=200,e2e=5000") == Slo(200.0, None, 5000.0)
    with pytest.raises(ValueError):
        Slo.parse("latency=3")


@pytest.mark.parametrize("args", [["--concurrency", "0"], ["--concurrency", "x"], ["--endpoint", "embeddings"],
                                  ["--slo", "nope=1"], ["--rounds", "0"], ["--top-p", "0"],
                                  ["--temperature", "-1"], ["--top-k", "-2"]])
def test_cli_rejects_bad_options(args):
    result = CliRunner().invoke(app, ["bench", "serving", "--base-url", "http://127.0.0.1:9/v1", *args])
    assert result.exit_code == 2, result.output
