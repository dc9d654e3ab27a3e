"""get_task: spec parsing and one-line errors; make: argument checks."""
import pytest

from lengthwise.errors import LengthwiseError
from lengthwise.tasks import TASKS, Task, get_task


def words(prompt, prefix):
    return (prompt + "\n" + prefix).split()


def test_registry_lists_every_task():
    assert list(TASKS) == ["passkey", "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery",
                           "variable_tracking", "common_words", "frequent_words", "threads", "confusing_facts"]
    for name, cls in TASKS.items():
        t = get_task(name)
        assert isinstance(t, Task) and type(t) is cls and t.name == name and t.max_new_tokens > 0
        assert cls.__doc__ and cls.__module__  # each names its source


def test_options_parsed_as_int_float_str():
    t = get_task(" niah_single:haystack=noise, num_needles=4 ")
    assert (t.haystack, t.num_needles) == ("noise", 4)
    assert get_task("niah_multiquery").options() == {"haystack": "essay", "num_needles": 4, "num_values": 1,
                                                    "num_queries": 4}
    assert get_task("frequent_words:alpha=3").alpha == 3.0  # an int is fine where a float is due
    assert get_task("frequent_words:alpha=1.5").alpha == 1.5
    assert get_task("passkey:") == get_task("passkey")


@pytest.mark.parametrize("spec,words_in_message", [
    ("nope", ["unknown task 'nope'", "passkey", "confusing_facts"]),
    ("niah_single:depth=3", ["no option 'depth'", "haystack", "num_queries"]),
    ("passkey:haystack=noise", ["no option 'haystack'", "none"]),
    ("niah_single:haystack", ["needs a value"]),
    ("niah_single:haystack=hay", ["essay, noise"]),
    ("niah_single:num_needles=two", ["num_needles takes int"]),
    ("niah_single:num_needles=1.5", ["num_needles takes int"]),
    ("niah_multiquery:num_queries=5", ["num_queries"]),
    ("variable_tracking:num_hops=0", ["num_hops"]),
    ("common_words:freq_common=2,freq_uncommon=3", []),  # checked at make, where the length is known
])
def test_bad_specs(spec, words_in_message):
    if not words_in_message:
        with pytest.raises(LengthwiseError, match="must exceed"):
            get_task(spec).make(words, 2000, 50, 0)
        return
    with pytest.raises(LengthwiseError) as e:
        get_task(spec)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words_in_message), msg


@pytest.mark.parametrize("depth", [-1, 100.5, 1000])
@pytest.mark.parametrize("name", TASKS)
def test_depth_out_of_range(name, depth):
    with pytest.raises(LengthwiseError, match="depth"):
        get_task(name).make(words, 1000, depth, 0)


@pytest.mark.parametrize("name", TASKS)
def test_length_too_small(name):
    with pytest.raises(LengthwiseError, match="too small"):
        get_task(name).make(words, 20, 50, 0)


def test_depth_endpoints_accepted():
    for depth in (0, 100, 0.0, 100.0, 37.5):
        assert get_task("passkey").make(words, 300, depth, 0).depth == float(depth)
