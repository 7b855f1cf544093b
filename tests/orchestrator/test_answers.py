import pytest

from orchestrator.answers import extract_answer, is_correct


@pytest.mark.parametrize(
    "response, expected",
    [
        ("There are 30 apples.", "30"),
        ("3 boxes x 10 apples = 30", "30"),
        ("The answer is 1,234.", "1234"),
        ("The answer is 53. Hana had 41 marbles and bought 17.", "53"),  # explicit cue beats the last number
        ("**Answer:** 12", "12"),
        ("It costs $12.50 in total", "12.5"),
        ("The result is -7", "-7"),
        ("Total: 30.0 apples", "30"),
        ("I am not sure.", None),
        ("Version v2.3 has 4 bugs", "4"),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_is_correct_numeric_and_text():
    assert is_correct("So Ben has 30 apples.", "30")
    assert not is_correct("So Ben has 31 apples.", "30")
    assert is_correct("The answer is 2,000", "2000")
    assert not is_correct("no idea", "30")
    assert is_correct("The capital is Paris.", "paris")
