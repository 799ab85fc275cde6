"""Losses: every class is a :class:`DMLLoss` called as ``loss(embeddings, labels)``."""

from dml.losses.base import DMLLoss, TripletLoss
from dml.losses.triplet_margin import MarginTripletLoss

__all__ = ["DMLLoss", "MarginTripletLoss", "TripletLoss"]
