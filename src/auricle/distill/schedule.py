"""Moved to :mod:`auricle.training.schedule`; kept so old imports keep working."""

from auricle.training.schedule import Schedule

__all__ = ["Schedule"]
