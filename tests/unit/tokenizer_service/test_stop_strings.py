"""StopStringMatcher: nothing at or past a stop string is released, however the text is split."""

from __future__ import annotations

import random

import pytest

from tokenizer_service.stop_strings import StopStringMatcher


def feed(matcher: StopStringMatcher, deltas: list[str]) -> tuple[str, bool]:
    released = []
    for delta in deltas:
        text, stopped = matcher.push(delta)
        released.append(text)
        if stopped:
            return "".join(released), True
    released.append(matcher.flush())
    return "".join(released), False


def reference(text: str, stops: list[str]) -> tuple[str, bool]:
    """Character by character: the first stop string to be complete wins."""
    for end in range(1, len(text) + 1):
        for stop in sorted(stops, key=len, reverse=True):
            if text[:end].endswith(stop):
                return text[: end - len(stop)], True
    return text, False


def test_stop_straddling_many_deltas():
    assert feed(StopStringMatcher(["STOP"]), ["hello S", "T", "O", "P and more"]) == ("hello ", True)


def test_releases_what_cannot_start_a_stop_string():
    matcher = StopStringMatcher(["###"])
    assert matcher.push("abc#") == ("abc", False)
    assert matcher.push("#x") == ("##x", False)
    assert matcher.push("y##") == ("y", False)
    assert matcher.flush() == "##"


def test_holds_back_at_most_the_longest_stop_minus_one():
    matcher = StopStringMatcher(["abcdef", "xy"])
    assert matcher.push("zzabcde") == ("zz", False)
    assert matcher.push("Q") == ("abcdeQ", False)


def test_overlapping_stops_first_completed_wins():
    # "bc" is complete before "abcd" would be.
    assert feed(StopStringMatcher(["abcd", "bc"]), ["a", "b", "c", "d"]) == ("a", True)
    assert feed(StopStringMatcher(["abcd", "bc"]), ["abcd"]) == ("a", True)
    # A stop that is the start of another: the shorter is complete first.
    assert feed(StopStringMatcher(["ab", "abc"]), ["xabc"]) == ("x", True)
    # Same end: the one starting earlier (the longer) cuts more.
    assert feed(StopStringMatcher(["c", "abc"]), ["xab", "c"]) == ("x", True)


def test_stop_string_repeating_its_own_start():
    assert feed(StopStringMatcher(["aab"]), ["a", "a", "a", "a", "b", "zzz"]) == ("aa", True)


def test_no_stops_passes_text_through():
    matcher = StopStringMatcher([])
    assert matcher.push("anything") == ("anything", False)
    assert matcher.flush() == ""


def test_empty_stop_string_is_refused():
    with pytest.raises(ValueError):
        StopStringMatcher(["ok", ""])


def test_push_after_stop_is_a_bug():
    matcher = StopStringMatcher(["x"])
    assert matcher.push("ax") == ("a", True)
    with pytest.raises(RuntimeError):
        matcher.push("more")


def test_random_splits_agree_with_character_by_character_reference():
    rng = random.Random(42)
    for _ in range(3000):
        text = "".join(rng.choice("ab🙂c") for _ in range(rng.randint(0, 20)))
        stops = ["".join(rng.choice("ab🙂c") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        deltas, position = [], 0
        while position < len(text):
            size = rng.randint(0, 5)
            deltas.append(text[position : position + size])
            position += size
        assert feed(StopStringMatcher(stops), deltas) == reference(text, stops), (text, stops, deltas)
