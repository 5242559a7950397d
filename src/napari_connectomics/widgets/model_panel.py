"""The Model panel: pick an architecture, set its key options, see what it implies, load/save YAML.

The panel edits the ``model`` section of the viewer's shared config (:mod:`.session`), which the
Train panel trains. It keeps a *draft* of the config: every option change edits the draft, the
draft is checked with the CLI's validator (plus the few rules the builders check), and only a
valid draft replaces ``session.config``; an invalid one is reported in a red line and waits for
the next edit. The panel also follows configs set elsewhere (a YAML loaded in another panel).

Registry facts (patch multiple, deep-supervision scales, 2D/3D) are shown at once; the parameter
count needs a built network (on the meta device), so the viewer's engine worker process computes it
(:mod:`.worker_client`; a :class:`~.background.BackgroundJob` waits for the answer), debounced so a
burst of edits builds only the last configuration. Then the worker times a training step of the
config on this machine (:mod:`.step_probe`), shown next to the count; not while a run trains.
With ``NAPARI_CONNECTOMICS_TRAINING=thread`` both run in a thread of napari's process instead.
Nothing here imports torch.
"""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui import widgets
from omegaconf import DictConfig
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..config import ConfigError, load_config, save_config
from ..models.architectures.registry import get_architecture_spec, list_architectures
from .background import BackgroundJob
from .dock_watch import watch_dock
from .event_passes import deferred_call
from .forms import knob_widget
from .model_options import (
    FIELD_LABELS,
    ModelFacts,
    architecture_label,
    checked_config,
    config_value,
    fields_for,
    follow_dimensions,
    model_facts,
    optional_choice_labels,
    parameter_key,
    set_model_value,
    switch_architecture,
    widget_value,
)
from .notify import describe_error, notify_error
from .session import session_for
from .step_probe import probe_config, probe_key
from .worker_client import engine_for, quick_request, use_worker

if TYPE_CHECKING:
    import napari

__all__ = ["ModelPanel"]

logger = logging.getLogger(__name__)

ERROR_STYLE = "color: #e05d5d;"
YAML_FILTER = "YAML config (*.yaml *.yml);;All files (*)"


class ModelPanel(QWidget):
    """Architecture drop-down, the chosen network's options, model info, and YAML load/save.

    Attributes a caller (or test) can drive:
        architecture: the magicgui ComboBox of architectures (``.value`` is the name).
        option(name): the widget of ``model.<name>`` currently shown; setting its ``.value``
            applies the change as a user edit would.
        facts / parameter_count / parameter_error / counting / step_time / probing: what the info
            box shows (step_time: seconds per training step here, a StepTime, once measured).
        error: the current one-line problem of the draft, or None when it is valid.
    """

    DEBOUNCE_MS = 300

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self._published: Any = self.session.config
        self._draft: DictConfig = copy.deepcopy(self.session.config)
        self._option_widgets: dict[str, widgets.Widget] = {}
        self._set_aside: dict[str, Any] = {}  # options a switch of network reset, by field

        self.error: str | None = None
        self.facts: ModelFacts | None = None
        self.parameter_count: int | None = None
        self.parameter_error: str | None = None
        self._counts: dict[Any, int] = {}
        self._wanted: tuple[Any, DictConfig] | None = None  # the count the info box waits for
        self._queued: tuple[Any, DictConfig] | None = None  # ... not yet handed to a job
        self._job: BackgroundJob | None = None
        self._alive = True
        self.step_time: Any = None  # the StepTime of the shown config (step_probe), once measured
        self._step_times: dict[str, Any] = {}
        self._probe_wanted: str | None = None  # the probe the info box waits for
        self._probe_queued: tuple[str, DictConfig] | None = None
        self._probe_job: BackgroundJob | None = None
        self.use_worker = use_worker()  # False: count and probe in a thread of napari's process
        self.engine = engine_for(napari_viewer)  # shared with the viewer's Train and Segment panels
        if self.use_worker:
            self.engine.hold(self)  # starts it: it imports torch while the panel shows the facts

        self._count_timer = QTimer(self)
        self._count_timer.setSingleShot(True)
        self._count_timer.setInterval(self.DEBOUNCE_MS)
        self._count_timer.timeout.connect(self._start_count)

        # the first check of the draft (validation, copies: ~30 ms) comes in a pass of the event loop
        # of its own, after the one that builds the panel (see dock.py)
        self._first_check = deferred_call(self, lambda: self._revalidate(publish=False))

        self._build_ui()
        self._show_draft()
        self._first_check.start()

        self.session.events.config.connect(self._on_session_config)
        self.session.events.training.connect(self._on_training_changed)
        self.destroyed.connect(functools.partial(
            _forget_session, self.session, [(self.session.events.config, self._on_session_config),
                                            (self.session.events.training, self._on_training_changed)],
            self._mark_dead, self.engine, id(self)))
        self.dock_watch = watch_dock(self)  # its dock closed: the panel goes (and lets the worker go)

    # --- layout -------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        names = list_architectures()
        self.architecture = widgets.ComboBox(
            name="architecture", label="architecture",
            choices=[(architecture_label(n), n) for n in names],
            value=self._draft.model.architecture,
            tooltip="registered networks (`napari-connectomics list-architectures`)",
        )
        self.architecture.changed.connect(self._on_architecture_changed)
        header = widgets.Container(widgets=[self.architecture], labels=True)

        self._options_box = QGroupBox("Options")
        self._options_layout = QVBoxLayout(self._options_box)
        self._options_layout.setContentsMargins(4, 4, 4, 4)
        self.options = widgets.Container(labels=True)
        self._options_layout.addWidget(self.options.native)

        info_box = QGroupBox("Model info")
        info_layout = QVBoxLayout(info_box)
        self.info_label = QLabel()
        self.info_label.setWordWrap(True)
        self.info_label.setTextInteractionFlags(self.info_label.textInteractionFlags() | _selectable())
        info_layout.addWidget(self.info_label)

        self.status_label = QLabel()
        self.status_label.setWordWrap(True)

        self.load_button = QPushButton("Load YAML…")
        self.load_button.setToolTip("replace the whole config with a YAML file (the one `train --config` takes)")
        self.load_button.clicked.connect(self._choose_and_load)
        self.save_button = QPushButton("Save YAML…")
        self.save_button.setToolTip("save the whole config as YAML for `napari-connectomics train --config`")
        self.save_button.clicked.connect(self._choose_and_save)
        buttons = QHBoxLayout()
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.save_button)

        layout = QVBoxLayout(self)
        layout.addWidget(header.native)
        layout.addWidget(self._options_box)
        layout.addWidget(info_box)
        layout.addWidget(self.status_label)
        layout.addLayout(buttons)
        layout.addStretch(1)
        self._header = header

    def _rebuild_options(self) -> None:
        """Replace the option widgets by those of the draft's architecture, showing draft values.

        Values live in the draft, not in the widgets, so options set before switching network
        (filters, dropout...) are still there when switching back.
        """
        architecture = self._draft.model.architecture
        made = [self._make_option(architecture, name) for name in fields_for(architecture)]
        old = self.options
        self.options = widgets.Container(widgets=made, labels=True)
        self._options_layout.replaceWidget(old.native, self.options.native)
        old.native.setParent(None)
        old.native.deleteLater()
        self._option_widgets = {w.name: w for w in made}
        for widget in made:
            widget.changed.connect(functools.partial(self._on_option_changed, widget.name))

    def _make_option(self, architecture: str, name: str) -> widgets.Widget:
        """One option's widget from the schema's metadata (forms.knob_widget), adapted where the
        network narrows it: unset-able choices get a named "default" entry, norms are limited to
        those the network has, kernel sizes step over odd numbers."""
        value = self._draft.model[name]
        label = FIELD_LABELS.get(name) or name.replace("_", " ")
        choices = optional_choice_labels(architecture, name)
        if name == "norm" and get_architecture_spec(architecture).norms is not None:
            norms = list(get_architecture_spec(architecture).norms)
            choices = norms + ([value] if value not in norms else [])  # an unsupported one stays visible
        if choices is not None:  # built here: magicgui resets choices set after construction
            return widgets.ComboBox(name=name, label=label, tooltip=self._field_help(name),
                                    choices=choices, value=value)
        widget = knob_widget("model", name, widget_value(architecture, name, value), label)
        if name == "kernel_size":
            widget.step = 2
        return widget

    @staticmethod
    def _field_help(name: str) -> str | None:
        from ..config.schema import ModelConfig

        return ModelConfig.__dataclass_fields__[name].metadata.get("help")

    # --- public API -------------------------------------------------------------------------------

    def option(self, name: str) -> widgets.Widget:
        """The widget of ``model.<name>`` for the architecture shown (KeyError if not offered)."""
        return self._option_widgets[name]

    @property
    def option_names(self) -> list[str]:
        """The model fields currently offered, in display order."""
        return list(self._option_widgets)

    @property
    def draft(self) -> DictConfig:
        """A copy of the config as edited here (may be invalid; see :attr:`error`)."""
        return copy.deepcopy(self._draft)

    @property
    def counting(self) -> bool:
        """True while the parameter count shown is being (re)computed."""
        return self._wanted is not None or self._first_check.isActive()

    @property
    def probing(self) -> bool:
        """True while the step time shown is being measured (or waits for a run to end)."""
        return self._probe_wanted is not None

    def load_config_file(self, path: str | Path) -> DictConfig | None:
        """Replace the session's config by a YAML file's, as ``train --config`` would read it.

        A file that does not load (bad YAML, unknown key, invalid value) leaves everything as it
        was and is reported as a one-line napari notification. Returns the loaded config or None.
        """
        try:
            cfg = load_config(path)
        except (ConfigError, OSError, ValueError) as err:
            notify_error(err, f"Loading {Path(path).name}")
            return None
        logger.info("Model panel: loaded config %s", path)
        self.session.config = cfg
        self._on_session_config(self.session.config)  # in case the session saw nothing new
        if self.error is None:
            self._set_status(f"Loaded {Path(path).name}")
        return cfg

    def save_config_file(self, path: str | Path) -> Path | None:
        """Save the whole config (the panel's options included) as YAML the CLI loads.

        Refuses, with a notification, while the options are invalid: the CLI would refuse the
        file too. Writing is atomic (save_config), so an existing file is never half replaced.
        """
        try:
            cfg = checked_config(self._draft)
            written = save_config(cfg, path)
        except (ConfigError, OSError, ValueError) as err:
            notify_error(err, f"Saving {Path(path).name}")
            return None
        logger.info("Model panel: saved config %s", written)
        self._set_status(f"Saved {written.name}")
        return written

    # --- edits ------------------------------------------------------------------------------------

    def _on_architecture_changed(self, name: str) -> None:
        if name == self._draft.model.architecture:
            return
        switch_architecture(self._draft, name, self._set_aside)
        self._rebuild_options()
        self._revalidate(publish=True)

    def _on_option_changed(self, name: str, shown: Any) -> None:
        try:
            set_model_value(self._draft, name, config_value(name, shown))
        except (ConfigError, ValueError) as err:
            self._show_invalid(describe_error(err))
            return
        if name == "spatial_dims":
            follow_dimensions(self._draft)
        self._revalidate(publish=True)

    def _revalidate(self, publish: bool) -> None:
        """Check the draft; a valid one goes to the session (when ``publish``) and gets counted."""
        self._first_check.stop()
        try:
            candidate = checked_config(self._draft)
        except (ConfigError, ValueError) as err:
            self._show_invalid(describe_error(err))
            return
        self.error = None
        self._set_status("")
        if publish and candidate != self._published:
            self._draft = copy.deepcopy(candidate)
            self._published = candidate
            self.session.config = candidate
        self._update_facts(self._draft)
        self._request_count(candidate)

    def _show_invalid(self, message: str) -> None:
        """Report the draft's problem; nothing is disabled, the next edit re-checks."""
        self.error = message
        self._set_status(message, error=True)
        self._cancel_count()
        self._cancel_probe()
        self.parameter_count = None
        self.parameter_error = None
        self._update_facts(self._draft, parameters="– (fix the options first)")

    def _on_session_config(self, cfg: Any) -> None:
        """Another panel (or a loaded file) replaced the config: follow it.

        When only other sections changed (the Train panel's fields), the form stays as it is and
        edits not yet valid survive; a different model section replaces the draft's.
        """
        if cfg is self._published or not self._alive:
            return
        same_model = self._published is not None and self._published.model == cfg.model
        self._published = cfg
        if same_model:
            model = copy.deepcopy(self._draft.model)
            self._draft = copy.deepcopy(cfg)
            self._draft.model = model
            self._revalidate(publish=True)  # publishes only edits the session doesn't have yet
            return
        self._draft = copy.deepcopy(cfg)
        self._set_aside.clear()
        self._show_draft()
        self._revalidate(publish=False)

    def _show_draft(self) -> None:
        """Put the draft's architecture and options into the widgets without re-applying them."""
        with self.architecture.changed.blocked():
            self.architecture.value = self._draft.model.architecture
        self._rebuild_options()

    # --- info -------------------------------------------------------------------------------------

    def _update_facts(self, cfg: DictConfig, parameters: str | None = None) -> None:
        try:
            self.facts = model_facts(cfg)
        except (ConfigError, ValueError) as err:  # e.g. an architecture the registry doesn't know
            self.facts = None
            self.info_label.setText(describe_error(err))
            return
        self.info_label.setText("\n".join(self.facts.lines(parameters or self._parameter_text())))

    def _parameter_text(self) -> str:
        if self.parameter_error is not None:
            return f"– ({self.parameter_error})"
        if self.parameter_count is None:
            return "computing…"
        if self.step_time is not None:
            return f"{self.parameter_count:,} · {self.step_time.text()}"
        if self.probing:
            return f"{self.parameter_count:,} · timing a training step…"
        return f"{self.parameter_count:,}"

    def _set_status(self, text: str, error: bool = False) -> None:
        self.status_label.setText(text)
        self.status_label.setStyleSheet(ERROR_STYLE if error else "")

    # --- parameter count in the background -------------------------------------------------------

    def _request_count(self, cfg: DictConfig) -> None:
        """Show the count of ``cfg``: at once if known, else after the debounce, in a job."""
        key = parameter_key(cfg)
        self.parameter_error = None
        if key in self._counts:
            self._cancel_count()
            self._show_count(self._counts[key])
            self._request_probe(cfg)
            return
        self._cancel_probe()
        self._wanted = self._queued = (key, cfg)
        self.parameter_count = None
        self._refresh_info()
        self._count_timer.start()  # restarts: only the last of a burst of edits is built

    def _cancel_count(self) -> None:
        self._count_timer.stop()
        self._wanted = self._queued = None

    def _start_count(self) -> None:
        """Hand the queued request to a job; one job at a time, a newer request waits for it."""
        if self._queued is None or (self._job is not None and self._job.running):
            return
        key, cfg = self._queued
        self._queued = None
        job_cfg = copy.deepcopy(cfg)
        engine, in_worker = self.engine, self.use_worker

        def work(report: Any, stop: Any) -> int:
            return quick_request(engine, in_worker, "count", job_cfg)

        self._job = BackgroundJob(
            work,
            on_done=functools.partial(self._count_done, key),
            on_error=functools.partial(self._count_failed, key),
            name="connectomics-model-parameters",
        )
        self._job.start()

    def _count_done(self, key: Any, count: int) -> None:
        self._counts[key] = count
        if not self._alive:
            return
        if self._wanted is not None and self._wanted[0] == key:
            cfg = self._wanted[1]
            self._wanted = None
            self._show_count(count)
            self._request_probe(cfg)
        self._start_next()

    def _count_failed(self, key: Any, error: BaseException) -> None:
        if not self._alive:
            return
        if self._wanted is not None and self._wanted[0] == key:
            self._wanted = None
            self.parameter_count = None
            self.parameter_error = describe_error(error)
            self._refresh_info()
        self._start_next()

    def _start_next(self) -> None:
        if self._queued is not None and not self._count_timer.isActive():
            self._start_count()

    def _show_count(self, count: int) -> None:
        self.parameter_count = count
        self.parameter_error = None
        self._refresh_info()

    def _refresh_info(self) -> None:
        if self.error is None:
            self._update_facts(self._draft)

    # --- step time in the background ------------------------------------------------------------

    def _request_probe(self, cfg: DictConfig) -> None:
        """Show how long a training step of ``cfg`` takes: at once if measured, else in a job."""
        try:
            probe = probe_config(cfg)
            key = probe_key(probe)
        except Exception:  # a config the probe cannot take: the count says enough
            logger.debug("no step-time probe for this config", exc_info=True)
            return
        if key in self._step_times:
            self._cancel_probe()
            self.step_time = self._step_times[key]
            self._refresh_info()
            return
        self.step_time = None
        self._probe_wanted = key
        self._probe_queued = (key, probe)
        self._refresh_info()
        self._start_probe()

    def _cancel_probe(self) -> None:
        self.step_time = None
        self._probe_wanted = self._probe_queued = None

    def _start_probe(self) -> None:
        """One probe at a time, never while a run trains (it would time the run's share of the CPU)."""
        if (self._probe_queued is None or self.session.training
                or (self._probe_job is not None and self._probe_job.running)):
            return
        key, cfg = self._probe_queued
        self._probe_queued = None
        engine, in_worker = self.engine, self.use_worker

        def work(report: Any, stop: Any) -> Any:
            return quick_request(engine, in_worker, "probe", cfg)

        self._probe_job = BackgroundJob(work, on_done=functools.partial(self._probe_done, key),
                                        on_error=functools.partial(self._probe_failed, key),
                                        name="connectomics-step-probe")
        self._probe_job.start()

    def _probe_done(self, key: str, step: Any) -> None:
        self._step_times[key] = step
        if not self._alive:
            return
        if self._probe_wanted == key:
            self._probe_wanted = None
            self.step_time = step
            self._refresh_info()
        self._start_probe()

    def _probe_failed(self, key: str, error: BaseException) -> None:
        logger.info("timing a training step failed: %s", error)
        if not self._alive:
            return
        if self._probe_wanted == key:
            self._probe_wanted = None
            self._refresh_info()
        self._start_probe()

    def _on_training_changed(self, state: str = "") -> None:
        if self._alive and not state:
            self._start_probe()  # a probe held back during the run

    # --- dialogs ----------------------------------------------------------------------------------

    def _choose_and_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a config", "", YAML_FILTER)
        if path:
            self.load_config_file(path)

    def _choose_and_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the config", "config.yaml", YAML_FILTER)
        if path:
            if not Path(path).suffix:
                path += ".yaml"
            self.save_config_file(path)

    def _mark_dead(self) -> None:
        self._alive = False


def _forget_session(session: Any, listeners: list[tuple[Any, Any]], mark_dead: Any, engine: Any,
                    holder: int, *_: Any) -> None:
    """When the panel's Qt object is destroyed, stop hearing the session (it outlives the panel) and
    let the engine worker go (the viewer's last panel gone ends it)."""
    mark_dead()
    for event, listener in listeners:
        try:
            event.disconnect(listener)
        except (ValueError, RuntimeError):
            pass
    engine.release(holder)


def _selectable() -> Any:
    from qtpy.QtCore import Qt

    return Qt.TextSelectableByMouse
