"""Clustering quality: NMI between class labels and a k-means clustering of the embeddings.

``NMI(Y, C) = I(Y; C) / ((H(Y) + H(C)) / 2)`` (arithmetic normalisation, as in sklearn's
``normalized_mutual_info_score`` and the DML literature, e.g. Oh Song et al., CVPR 2016), where
``Y`` are the labels and ``C`` the assignment of k-means with ``k`` = number of classes on the
L2-normalised embeddings.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from dml.eval.knn import ArrayLike, as_embeddings, as_labels


def nmi(embeddings: ArrayLike, labels: ArrayLike, *, seed: int = 0) -> float:
    """NMI between ``labels`` and k-means (k = number of classes) of L2-normalised ``embeddings``.

    k-means is sklearn's ``KMeans`` (one k-means++ initialisation, ``random_state=seed``), run on
    CPU in float64, so the result is deterministic for a given ``seed``.
    """
    from sklearn.metrics import normalized_mutual_info_score  # lazy: sklearn is slow to import

    x = as_embeddings(embeddings, "embeddings")
    y = as_labels(labels, x.shape[0], "labels", x.device).cpu().numpy()
    x = F.normalize(x.double(), dim=1).cpu().numpy()
    _, y = np.unique(y, return_inverse=True)
    assignment = kmeans_assign(x, int(y.max()) + 1, seed)
    return float(normalized_mutual_info_score(y, assignment))


def kmeans_assign(x: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Cluster index of each row of ``x`` by k-means with ``n_clusters`` centres."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit_predict(x)
