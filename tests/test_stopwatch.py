"""training.stopwatch: the time of a job over the sessions it was stopped and resumed in."""

import json
import time

import pytest

from training.stopwatch import Stopwatch


def test_a_later_session_adds_its_time_to_what_the_earlier_ones_saved(tmp_path):
    path = tmp_path / "elapsed.json"
    first = Stopwatch(path, started=time.time() - 30)
    first.save()
    assert json.loads(path.read_text())["seconds"] == pytest.approx(30, abs=0.5)
    # The first session went on for a while after its last save: that part is not counted.
    second = Stopwatch(path, started=time.time() - 5)
    assert second.seconds() == pytest.approx(35, abs=0.5)
    second.save()
    assert Stopwatch(path, started=time.time()).seconds() == pytest.approx(35, abs=0.5)
    second.discard()
    assert not path.exists()


def test_a_job_resumed_from_before_its_time_was_kept_has_no_total(tmp_path):
    path = tmp_path / "elapsed.json"
    untimed = Stopwatch(path, started=time.time() - 5, earlier_known=False)
    assert untimed.seconds() is None
    untimed.save()
    assert not path.exists()  # a later session must not take this one's time for the whole
    assert Stopwatch(path, started=time.time() - 5, earlier_known=False).seconds() is None
