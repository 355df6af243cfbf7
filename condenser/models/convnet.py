"""ConvNet-D3, the DC/DSA/IDC/MDC evaluation network: runtime/models.py's definition, one for both sides."""

from __future__ import annotations

from runtime.models import ConvNet

__all__ = ["ConvNet"]
