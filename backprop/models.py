"""Keras's module path for models: `from backprop.models import Sequential, load_model`."""

from __future__ import annotations

from .model import Sequential, load_model

__all__ = ["Sequential", "load_model"]
