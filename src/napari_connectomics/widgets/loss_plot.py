"""A live loss plot drawn with QPainter: train and validation loss against the optimizer step.

No matplotlib: a repaint draws at most one point per horizontal pixel per curve (the points are
bucketed by x), so it stays cheap on the GUI thread however long the run is. Points are appended
as progress events arrive; ``update()`` coalesces the repaints Qt makes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossPlot"]

SERIES_COLOURS = {"train": QColor(90, 160, 255), "val": QColor(255, 150, 60)}
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 58, 10, 18, 22


class LossPlot(QWidget):
    """Curves of ``(step, value)`` points per series ("train", "val"), auto-scaled axes."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._points: dict[str, list[tuple[float, float]]] = {name: [] for name in SERIES_COLOURS}
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("training loss (blue) and validation loss (orange) against the optimizer step")

    # --- data ------------------------------------------------------------------------------------
    def add_point(self, series: str, step: float, value: float) -> None:
        """Append a point (non-finite values are skipped: a skipped step is no data)."""
        if not math.isfinite(value):
            return
        self._points.setdefault(series, []).append((float(step), float(value)))
        self.update()

    def clear(self) -> None:
        for points in self._points.values():
            points.clear()
        self.update()

    def points(self, series: str) -> list[tuple[float, float]]:
        """A copy of one curve's points (for tests and export)."""
        return list(self._points.get(series, []))

    def last_step(self) -> float | None:
        steps = [points[-1][0] for points in self._points.values() if points]
        return max(steps) if steps else None

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(300, 160)

    # --- drawing ---------------------------------------------------------------------------------
    def paintEvent(self, event: object) -> None:  # noqa: N802 (Qt API)
        painter = QPainter(self)
        try:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            self._draw(painter)
        finally:
            painter.end()

    def _plot_rect(self) -> QRectF:
        return QRectF(_MARGIN_LEFT, _MARGIN_TOP, max(1, self.width() - _MARGIN_LEFT - _MARGIN_RIGHT),
                      max(1, self.height() - _MARGIN_TOP - _MARGIN_BOTTOM))

    def _draw(self, painter: QPainter) -> None:
        text = self.palette().windowText().color()
        rect = self._plot_rect()
        painter.setPen(QPen(text, 1))
        painter.drawRect(rect)
        everything = [p for points in self._points.values() for p in points]
        if not everything:
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "losses appear here while training")
            return
        x_lo, x_hi = min(p[0] for p in everything), max(p[0] for p in everything)
        y_lo, y_hi = min(p[1] for p in everything), max(p[1] for p in everything)
        if x_hi <= x_lo:
            x_hi = x_lo + 1
        if y_hi <= y_lo:
            y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
        pad = 0.05 * (y_hi - y_lo)
        y_lo, y_hi = y_lo - pad, y_hi + pad

        def to_screen(x: float, y: float) -> QPointF:
            return QPointF(rect.left() + (x - x_lo) / (x_hi - x_lo) * rect.width(),
                           rect.bottom() - (y - y_lo) / (y_hi - y_lo) * rect.height())

        self._draw_axes(painter, rect, text, (x_lo, x_hi), (y_lo, y_hi))
        for name, points in self._points.items():
            if points:
                self._draw_curve(painter, _bucketed(points, (x_lo, x_hi), int(rect.width())), to_screen,
                                 SERIES_COLOURS.get(name, text))
        self._draw_legend(painter, rect, text)

    def _draw_axes(self, painter: QPainter, rect: QRectF, colour: QColor, xs: tuple[float, float],
                   ys: tuple[float, float]) -> None:
        painter.setPen(QPen(colour, 1))
        metrics = painter.fontMetrics()
        for value, y in ((ys[1], rect.top()), (ys[0], rect.bottom())):
            label = _short(value)
            painter.drawText(QPointF(rect.left() - metrics.horizontalAdvance(label) - 4, y + metrics.ascent() / 2),
                             label)
        for value, align_right in ((xs[0], False), (xs[1], True)):
            label = f"{int(round(value))}"
            x = rect.right() - metrics.horizontalAdvance(label) if align_right else rect.left()
            painter.drawText(QPointF(x, rect.bottom() + metrics.ascent() + 3), label)
        painter.drawText(QPointF(rect.center().x() - metrics.horizontalAdvance("step") / 2,
                                 rect.bottom() + metrics.ascent() + 3), "step")

    @staticmethod
    def _draw_curve(painter: QPainter, points: Sequence[tuple[float, float]], to_screen, colour: QColor) -> None:
        painter.setPen(QPen(colour, 1.6))
        if len(points) == 1:
            painter.setBrush(colour)
            painter.drawEllipse(to_screen(*points[0]), 2.5, 2.5)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            return
        path = QPainterPath(to_screen(*points[0]))
        for point in points[1:]:
            path.lineTo(to_screen(*point))
        painter.drawPath(path)

    def _draw_legend(self, painter: QPainter, rect: QRectF, colour: QColor) -> None:
        x = rect.left() + 6
        metrics = painter.fontMetrics()
        for name in ("train", "val"):
            if not self._points.get(name):
                continue
            painter.setPen(QPen(SERIES_COLOURS[name], 3))
            y = _MARGIN_TOP - 7
            painter.drawLine(QPointF(x, y), QPointF(x + 14, y))
            painter.setPen(QPen(colour, 1))
            label = f"{name} {_short(self._points[name][-1][1])}"
            painter.drawText(QPointF(x + 18, y + metrics.ascent() / 2 - 1), label)
            x += 26 + metrics.horizontalAdvance(label)


def _bucketed(points: Sequence[tuple[float, float]], xs: tuple[float, float], width: int) -> list[tuple[float, float]]:
    """At most about ``width`` points: the mean of the points falling in each pixel column."""
    if len(points) <= max(2, width):
        return list(points)
    buckets: dict[int, list[float]] = {}
    steps: dict[int, float] = {}
    span = xs[1] - xs[0]
    for x, y in points:
        column = int((x - xs[0]) / span * (width - 1))
        buckets.setdefault(column, []).append(y)
        steps.setdefault(column, x)
    return [(steps[c], sum(v) / len(v)) for c, v in sorted(buckets.items())]


def _short(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.1e}"
