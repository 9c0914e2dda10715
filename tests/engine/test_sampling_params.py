import pytest

from seedance.engine.errors import InvalidRequest
from seedance.engine.sampling_params import SamplingParams


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0},
        {"temperature": -1},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"logprobs": 21},
        {"stop": [""]},
        {"stop": ["x"] * 17},
    ],
)
def test_bad_parameters_are_refused_with_a_reason(kwargs):
    with pytest.raises(InvalidRequest) as err:
        SamplingParams(**kwargs).validate()
    assert str(err.value)


def test_defaults_are_valid():
    SamplingParams().validate()
