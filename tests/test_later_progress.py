"""napari's progress bar opens a pass after a press, and a close before then cancels it."""

import pytest

pytest.importorskip("qtpy")

from qtpy.QtWidgets import QWidget  # noqa: E402

from napari_connectomics.widgets.later_progress import LaterProgress  # noqa: E402


class Bar:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def later_and_bars(qtbot):
    """A LaterProgress on a widget (yielded with it: the timer dies with the widget), and the bars
    its ``open`` made (``open(make)``: one more)."""
    parent = QWidget()
    qtbot.addWidget(parent)
    later = LaterProgress(parent)
    made: list[Bar] = []

    def make() -> Bar:
        made.append(Bar())
        return made[-1]

    yield later, made, make
    del parent


def test_the_bar_opens_a_pass_later_and_closes(later_and_bars, qtbot):
    later, made, make = later_and_bars
    later.open(make)
    assert later.bar is None and not made  # not in the pass that asked for it
    qtbot.waitUntil(lambda: later.bar is not None, timeout=2000)
    assert made == [later.bar]
    later.open(make)  # a new one replaces it
    assert made[0].closed and later.bar is None
    qtbot.waitUntil(lambda: later.bar is not None, timeout=2000)
    later.close()
    assert made[1].closed and later.bar is None


def test_closing_before_it_opens_cancels_it(later_and_bars, qtbot):
    later, made, make = later_and_bars
    later.open(make)
    later.close()
    qtbot.wait(200)
    assert not made and later.bar is None
