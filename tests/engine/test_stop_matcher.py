import itertools

from hypothesis import given
from hypothesis import strategies as st

from seedance.engine.stop_matcher import StopStringMatcher


def run(pieces, stops):
    m = StopStringMatcher(stops)
    emitted = []
    for piece in pieces:
        text, matched = m.feed(piece)
        emitted.append(text)
        if matched is not None:
            return "".join(emitted), matched
    return "".join(emitted) + m.flush(), None


def test_stop_split_across_three_tokens_is_not_leaked():
    m = StopStringMatcher(["END"])
    assert m.feed("hello E") == ("hello ", None)  # "E" might start the stop: held back
    assert m.feed("N") == ("", None)
    assert m.feed("D tail") == ("", "END")


def test_false_start_is_released():
    m = StopStringMatcher(["END"])
    assert m.feed("ab E") == ("ab ", None)
    assert m.feed("x") == ("Ex", None)


def test_earliest_of_several_stops_wins():
    assert run(["a STOP b HALT"], ["HALT", "STOP"]) == ("a ", "STOP")


def test_text_is_flushed_when_the_stream_ends_otherwise():
    m = StopStringMatcher(["\n\n"])
    assert m.feed("line\n") == ("line", None)
    assert m.flush() == "\n"


alphabet = st.sampled_from("abc \n")


@given(
    text=st.text(alphabet, max_size=40),
    stop=st.text(alphabet, min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 40), max_size=10),
)
def test_any_split_emits_exactly_the_text_before_the_first_stop(text, stop, cuts):
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    emitted, matched = run(pieces, [stop])
    idx = text.find(stop)
    if idx == -1:
        assert emitted == text and matched is None
    else:
        assert emitted == text[:idx] and matched == stop
