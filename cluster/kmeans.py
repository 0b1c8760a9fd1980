"""K-means in torch (Lloyd's algorithm), for `train_cluster.py --gpu`.

Upstream offers a GPU k-means beside sklearn's; this one runs on any torch
device, seeds its own generator and never touches the global random state.
"""

from __future__ import annotations

import torch

from cluster import nearest_centers


def kmeans_torch(
    features: torch.Tensor,
    n_clusters: int,
    max_iter: int = 500,
    tol: float = 1e-2,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Centres (n_clusters, D) of features (N, D), starting from random distinct rows.

    Stops when the total centre movement falls below `tol` (upstream's
    criterion) or after `max_iter` rounds. An empty cluster keeps its centre.
    """
    data = features.to(device=device, dtype=torch.float32)
    n_rows = data.shape[0]
    if not 0 < n_clusters <= n_rows:
        raise ValueError(f"n_clusters must be in 1..{n_rows}, got {n_clusters}")
    generator = torch.Generator().manual_seed(seed)
    start = torch.randperm(n_rows, generator=generator)[:n_clusters].to(data.device)
    centers = data[start].clone()
    for _ in range(max_iter):
        labels = nearest_centers(data, centers)
        sums = torch.zeros_like(centers).index_add_(0, labels, data)
        counts = torch.bincount(labels, minlength=n_clusters).to(data.dtype)
        filled = counts > 0
        updated = centers.clone()
        updated[filled] = sums[filled] / counts[filled, None]
        shift = (updated - centers).norm(dim=1).sum()
        centers = updated
        if shift < tol:
            break
    return centers
