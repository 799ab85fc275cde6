"""Evaluation: exact chunked k-NN retrieval metrics (Recall@K, MAP@R, R-precision) and NMI."""

from dml.eval.clustering import nmi
from dml.eval.knn import exact_knn
from dml.eval.retrieval import retrieval_metrics

__all__ = ["exact_knn", "nmi", "retrieval_metrics"]
