"""One `name:key=value` parser for position schemes, tasks and KV policies."""
import pytest

import lengthwise as lw
from lengthwise import kv, options, positions
from lengthwise.tasks import get_task


@pytest.mark.parametrize("read,spec,needle", [
    (positions.parse, "yarn:factr=4", "yarn has no option 'factr'"),
    (get_task, "passkey:dept=3", "passkey has no option 'dept'"),
    (kv.parse, "window:recnt=3", "window has no option 'recnt'"),
    (positions.parse, "yarn:factor=4,factor=2", "given twice"),
    (get_task, "niah_single:haystack", "needs a value"),
    (kv.parse, "window:sinks=two", "sinks='two' is not an integer"),
    (positions.parse, "yarn:beyond=maybe", "is not true or false"),
])
def test_every_spec_reader_names_the_problem(read, spec, needle):
    with pytest.raises(lw.LengthwiseError, match=needle):
        read(spec)


def test_values_take_the_declared_types():
    assert positions.parse("yarn:factor=4,beyond=true") == positions.parse("yarn: factor = 4 , beyond=1")
    assert kv.parse("window:sinks=0,recent=9,every=0") == kv.Window(0, 9, every=0)
    assert options.split(" a : x=1, ,y=2 ") == ("a", ["x=1", "y=2"])


def test_typed_fields_built_in_python():
    with pytest.raises(lw.LengthwiseError, match="sinks must be an integer"):
        kv.Window(sinks=2.5)
    with pytest.raises(lw.LengthwiseError, match="every must be an integer"):
        kv.Window(every=True)
    assert kv.Window(recent=7).spec() == "window:sinks=4,recent=7"
