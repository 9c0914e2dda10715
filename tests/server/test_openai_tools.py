"""server/transports/openai_tools.py and the chat side of tools, without a server: a template that takes `tools`
gets them, one that does not gets the system message; calls parse back; the call grammar is the declared schema;
a streamed call's SSE chunks are OpenAI's (the SDK rebuilds the call)."""

import json

import jsonschema
import pytest

from seedance.engine.async_engine import GenerateRequest, RequestStream
from seedance.engine.events import FinishReason, TokenEvent
from seedance.models.loader import BUILTIN_MODEL_DIR
from seedance.models.tokenizer import TextTokenizer
from seedance.server.http.http_errors import HttpError
from seedance.server.transports.openai_api import _with_tools, parse_chat
from seedance.server.transports.openai_format import OpenAIFormatter
from seedance.server.transports.openai_tools import parse_tool_choice, tool_calls_of
from seedance.server.transports.sse_generation import SseGeneration
from seedance.server.transports.tool_call_parser import CallParser, parse_call

FN = {"type": "function", "function": {"name": "lookup", "description": "Find a verse.", "parameters": {
    "type": "object", "properties": {"book": {"type": "string"}}, "required": ["book"]}}}
TOOLS_TEMPLATE = ("{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
                  "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:")


def tokenizer(template: str | None) -> TextTokenizer:
    base = TextTokenizer.from_dir(BUILTIN_MODEL_DIR)
    return TextTokenizer(None, base.eos_token_ids, backend=base.backend, chat_template=template)


def chat(**body) -> tuple[GenerateRequest, object]:
    parsed = parse_chat({"messages": [{"role": "user", "content": "Where is Genesis?"}], **body})
    return parsed.request, parsed.tool_choice


def test_a_template_that_takes_tools_renders_them():
    tk = tokenizer(TOOLS_TEMPLATE)
    assert tk.template_takes_tools
    request, choice = chat(tools=[FN])
    _with_tools(request, choice, tk)
    assert request.tools == [FN] and request.messages[0]["role"] == "user"
    text = tk.decode(tk.apply_chat_template(request.messages, tools=request.tools))
    assert text.startswith("TOOLS:lookup;")


def test_a_template_without_tools_gets_a_system_message():
    tk = tokenizer("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    assert not tk.template_takes_tools
    request, choice = chat(tools=[FN], tool_choice="required",
                           messages=[{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Where is Genesis?"}])
    _with_tools(request, choice, tk)
    assert request.tools is None and request.messages[0]["role"] == "system"
    system = request.messages[0]["content"]
    assert system.startswith("Be brief.") and '"name":"lookup"' in system and "You must call one of them" in system


def test_the_call_grammar_is_the_declared_schema_and_calls_parse_back():
    choice = parse_tool_choice({"tools": [FN], "tool_choice": {"type": "function", "function": {"name": "lookup"}}})
    schema = choice.call_schema()
    jsonschema.validate({"name": "lookup", "arguments": {"book": "Ruth"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "lookup", "arguments": {}}, schema)
    assert choice.guided().kind == "json_schema"
    assert parse_tool_choice({"tools": [FN]}).guided().kind == "grammar"  # auto: a call or text
    calls = tool_calls_of('{"name": "lookup", "arguments": {"book": "Ruth"}}', choice)
    assert calls[0]["function"] == {"name": "lookup", "arguments": json.dumps({"book": "Ruth"})}
    assert tool_calls_of("Genesis is first.", choice) is None
    assert tool_calls_of('{"name": "lookup", "argu', choice) is None  # cut short: returned as text
    assert parse_tool_choice({"tools": [FN], "tool_choice": "none"}) is None


def test_tool_messages_go_back_to_the_template():
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"book": "Ruth"}'}}
    request, _ = chat(messages=[{"role": "user", "content": "Ruth?"},
                                {"role": "assistant", "content": None, "tool_calls": [call]},
                                {"role": "tool", "tool_call_id": "call_1", "content": "Ruth 1:1"}])
    assert request.messages[1] == {"role": "assistant", "content": json.dumps({"name": "lookup",
                                                                                "arguments": {"book": "Ruth"}})}
    assert request.messages[2] == {"role": "tool", "content": "Ruth 1:1"}
    with pytest.raises(HttpError):
        chat(messages=[{"role": "tool", "content": "x"}])  # no tool_call_id


def _fed(text: str, cuts: list[int]) -> tuple[CallParser, list[dict]]:
    parser, deltas, last = CallParser(frozenset({"lookup"})), [], 0
    for cut in [*cuts, len(text)]:
        deltas += parser.feed(text[last:cut])
        last = cut
    return parser, deltas


@pytest.mark.parametrize("arguments", ['{"book":"Ruth","at":[1,{"v":"}]\\"x"}],"n":null}', '{ "book": "a{b" }',
                                       '"just a string"', "42"])
def test_a_call_streams_its_arguments_in_fragments_however_the_text_is_cut(arguments):
    text = f'{{"name": "lookup", "arguments": {arguments}}}'
    whole = parse_call(text, frozenset({"lookup"}))
    assert whole["function"] == {"name": "lookup", "arguments": arguments}
    for cuts in ([], list(range(1, len(text))), list(range(3, len(text), 7))):
        parser, deltas = _fed(text, cuts)
        assert parser.complete and deltas[0]["id"] == parser.id and deltas[0]["function"]["name"] == "lookup"
        assert all(d["index"] == 0 for d in deltas) and all("name" not in d["function"] for d in deltas[1:])
        assert "".join(d["function"]["arguments"] for d in deltas) == arguments
    if len(arguments) > 4:  # one piece per character: the arguments go out as they are written, not at the end
        assert len(_fed(text, list(range(1, len(text))))[1]) > 3


def test_a_call_cut_short_is_announced_but_not_complete():
    parser, deltas = _fed('{"name": "lookup", "arguments": {"book": "Ru', [10, 30])
    assert parser.started and not parser.complete and deltas[-1]["function"]["arguments"].endswith('"Ru')
    assert _fed('{"name": "look', [])[1] == [] and not _fed('{"name": "other", "arguments": {}}', [])[0].started


def test_a_call_whose_name_comes_last_still_parses_whole():
    call = parse_call('{"arguments": {"book": "Ruth"}, "name": "lookup"}', frozenset({"lookup"}))
    assert call["function"] == {"name": "lookup", "arguments": json.dumps({"book": "Ruth"})}


def sse_stream(pieces: list[str], finish: FinishReason, mode: str = "required") -> list[dict]:
    """The SSE chunks SseGeneration writes for a reply arriving in these pieces (one engine step each)."""
    choice = parse_tool_choice({"tools": [FN], "tool_choice": mode})
    stream = RequestStream(None, "chatcmpl-1", 4)
    gen = SseGeneration("chatcmpl-1", stream, None, fmt=OpenAIFormatter(True, "m", "chatcmpl-1", None),
                        tool_choice=choice)
    out: list[bytes] = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        stream._deliver(TokenEvent("chatcmpl-1", i, 7, piece, finish_reason=finish if last else None,
                                   num_prompt_tokens=4))
        gen.produce(out, [])
    data = [line.removeprefix(b"data: ") for event in out for line in event.split(b"\n")
            if line.startswith(b"data: ") and line != b"data: [DONE]"]
    return [json.loads(d) for d in data]


def test_the_sse_stream_of_a_call_is_openais_and_the_sdk_rebuilds_it():
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    text = '{"name": "lookup", "arguments": {"book": "Ruth", "verse": [1, 2]}}'
    chunks = sse_stream([text[i:i + 5] for i in range(0, len(text), 5)], FinishReason.STOP)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant" and deltas[0]["content"] is None  # no empty text chunk first
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "lookup"
    assert all(set(c) == {"index", "function"} and set(c["function"]) == {"arguments"} for c in calls[1:])
    assert len(calls) > 5 and [c["choices"][0]["finish_reason"] for c in chunks][-1] == "tool_calls"
    state = ChatCompletionStreamState(input_tools=[FN])
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    message = state.get_final_completion().choices[0].message
    assert message.content is None and message.tool_calls[0].function.arguments == '{"book": "Ruth", "verse": [1, 2]}'


def test_a_streamed_call_cut_short_ends_with_length_and_one_before_its_name_as_text():
    cut = sse_stream(['{"name": "lookup", ', '"arguments": {"bo', 'ok": "Ru'], FinishReason.LENGTH)
    assert cut[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(d["function"]["arguments"] for c in cut for d in c["choices"][0]["delta"].get("tool_calls", [])
                   ) == '{"book": "Ru'
    early = sse_stream(['{"name": "lo'], FinishReason.LENGTH)
    assert early[-1]["choices"][0]["delta"]["content"] == '{"name": "lo'
    assert early[-1]["choices"][0]["finish_reason"] == "length"
    text = sse_stream(["Ruth is ", "a book."], FinishReason.STOP, mode="auto")
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in text) == "Ruth is a book."
