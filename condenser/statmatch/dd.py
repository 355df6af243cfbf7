"""G-VBSM's data densification: flatten each class's Gram spectrum so same-class images stay diverse.

For a class group X (n images, average-pooled to at most 32x32 and flattened), the eigenvalues of the
n x n Gram matrix X X^T are pushed towards softmax(λ/τ) by KL(sg(softmax(λ/τ)) || softmax(λ)), which
raises the spectrum's entropy, i.e. the rank of the group. Literal by default (no spectrum
normalisation, which saturates on raw pixels; G-VBSM paper §3.1); `normalize` divides λ by its mean.

Nested variant (the per-IPC schedule): image i of a class is densified against the *detached* images
0..i-1 of its class, so a prefix never depends on later images and each new image adds a direction the
prefix lacks. A single image (IPC 1) gives one eigenvalue and no loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dd_features(x: torch.Tensor, size: int = 32) -> torch.Tensor:
    """[N, C, H, W] -> [N, D]: average-pooled to at most size x size, flattened."""
    if max(x.shape[2:]) > size:
        x = F.adaptive_avg_pool2d(x, (min(size, x.shape[2]), min(size, x.shape[3])))
    return x.reshape(x.shape[0], -1)


def spectrum_kl(rows: torch.Tensor, tau: float = 4.0, normalize: bool = False) -> torch.Tensor:
    """rows [K, n, D] (K groups of n vectors) -> summed KL of the K Gram spectra; 0 when n < 2."""
    if rows.shape[1] < 2:
        return rows.new_zeros(())
    gram = rows.double() @ rows.double().transpose(1, 2)
    lam = torch.linalg.eigvalsh(gram)  # [K, n], symmetric PSD: real eigenvalues
    if normalize:
        lam = lam / lam.mean(1, keepdim=True).clamp_min(1e-12)
    target = torch.softmax(lam / tau, dim=1).detach()
    kl = (target * (target.clamp_min(1e-300).log() - torch.log_softmax(lam, dim=1))).sum()
    return kl.float()


def nested_densification(current: torch.Tensor, context: torch.Tensor | None, tau: float = 4.0,
                         normalize: bool = False) -> torch.Tensor:
    """current [G, C, D] (group g = the next IPC index after group g-1), context [P, C, D] or None.

    Group g is densified with the context and groups < g detached: one batched eigen-solve per group.
    """
    earlier = context.detach() if context is not None else current.new_zeros(0, *current.shape[1:])
    total = current.new_zeros(())
    for g in range(current.shape[0]):
        rows = torch.cat([earlier, current[:g].detach(), current[g:g + 1]], 0)  # [P+g+1, C, D]
        total = total + spectrum_kl(rows.transpose(0, 1), tau, normalize)
    return total


def class_densification(syn: torch.Tensor, tau: float = 4.0, normalize: bool = False) -> torch.Tensor:
    """syn [K, M, D]: every class group densified jointly (the joint schedule)."""
    return spectrum_kl(syn, tau, normalize)
