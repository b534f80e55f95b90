"""Synthetic city generator: residents, institutions and their daily extracts, with faults.

Public API (called by ``healthlake generate``): :func:`generate` and :func:`deliver_late`.
"""

from jobs.generate.core import deliver_late, generate

__all__ = ["deliver_late", "generate"]
