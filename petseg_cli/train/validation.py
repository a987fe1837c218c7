"""Settings checked whole, before any work starts: settings' own values, then the names and rules each
component owns (models, losses, optimisers and schedules, normalisations). Settings imports none of them;
this module, above both, asks each in turn."""

from __future__ import annotations

from pathlib import Path

from ..data.demo_set import resolve_data_dir
from ..data.transforms import check_normalization
from ..models.losses import check_settings as check_loss
from ..models import check_settings as check_model
from ..models.size_schedule import parse_size_schedule
from .optim import check_settings as check_optimisation
from ..config.settings import Settings, validate
from ..run.trackers import check_loggers


def validate_settings(settings: Settings) -> Settings:
    """``settings`` checked (in place: the model name made canonical, a ``data_dir`` of ``demo`` replaced by
    the demo set's installed path); a UsageError names the flag to fix."""
    data_dir = resolve_data_dir(settings.data.data_dir)
    if data_dir != Path(settings.data.data_dir):  # the demo set; any other directory stays as written
        settings.data.data_dir = str(data_dir)
    schedule = parse_size_schedule(settings.data.size_schedule)
    if schedule is not None:  # its last size is the run's size
        settings.data.image_size = schedule.final
    check_model(settings)
    validate(settings)
    check_loss(settings.train)
    check_optimisation(settings.train)
    check_normalization(settings.data.normalization)
    check_loggers(settings.train.loggers)
    return settings
