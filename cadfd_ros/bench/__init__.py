"""Synthetic scenes, metrics and the ``cadfd bench`` benchmark."""
