import pytest

from orchestrator.answers import extract_answer, is_correct, is_numeric


@pytest.mark.parametrize(
    "response, expected",
    [
        ("There are 30 apples.", "30"),
        ("3 boxes x 10 apples = 30", "30"),
        ("The answer is 1,234.", "1234"),
        ("The answer is 53. Hana had 41 marbles and bought 17.", "53"),  # explicit cue beats the last number
        ("**Answer:** 12", "12"),
        ("The answer is: 12", "12"),
        ("Final answer = 7 (I checked 3 + 4)", "7"),
        ("It costs $12.50 in total", "12.5"),
        ("The result is -7", "-7"),
        ("The result is \u22127", "-7"),  # unicode minus
        ("Total: 30.0 apples", "30"),
        ("I am not sure.", None),
        ("Version v2.3 has 4 bugs", "4"),
        ("We add them: 5 + 7 = 12. So \\boxed{12} is it, not 13.", "12"),  # a boxed answer beats the last number
        ("Step 1: 3 * 4 = 12\nStep 2: 12 + 1 = 13\n#### 13\nDouble-check: 6 + 7", "13"),  # '####' marker line
        ("The answer is twelve.", "12"),
        ("There are forty-two of them", "42"),
        ("minus three", "-3"),
        ("The answer is approximately 5, but 6 also works", "6"),  # the cue is not followed by a number: last number
        ("Answer: 8 apples. Then 8 + 2 = 10 for Ben.", "8"),
        ("2 hours is 120 minutes.", "120"),
        ("", None),
    ],
)
def test_extract_numeric_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    "response, expected",
    [
        ("The last letter of 'apple' is 'e'.", "e"),
        ("The word 'cat' reversed is 'tac'.", "tac"),
        ("Reversed, it reads tac", "tac"),
        ("Answer: Tac. That's it: 'cat' backwards.", "tac"),  # the cue beats the quoted words
        ("\u201cnoom\u201d", "noom"),
        ("12345", None),
    ],
)
def test_extract_word_answer(response, expected):
    assert extract_answer(response, numeric=False) == expected


def test_is_correct_numeric_and_text():
    assert is_correct("So Ben has 30 apples.", "30")
    assert not is_correct("So Ben has 31 apples.", "30")
    assert is_correct("The answer is 2,000", "2000")
    assert is_correct("That is 2.50 dollars", "2.5")
    assert not is_correct("no idea", "30")
    assert is_correct("The capital is Paris.", "paris")
    assert is_correct("The last letter is 'E'.", "e")
    assert not is_correct("The last letter is 'p'.", "e")
    assert is_numeric(" -4 ") and is_numeric("1,000") and not is_numeric("tac")
