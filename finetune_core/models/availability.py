"""Whether ImageNet weights can load here before a run starts: cached, or downloadable.

A run whose weights can neither be read from torch hub's folder nor downloaded fails at
its start; the Setup page asks first and says so next to the weights choice.
"""

from __future__ import annotations

import http.client
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from finetune_core.models.weights import (
    imagenet_weights_cached,
    imagenet_weights_path,
    imagenet_weights_url,
)

PROBE_TIMEOUT_S = 3.0  # DNS included: an offline machine answers within it


@dataclass(frozen=True)
class WeightsAvailability:
    """Where ImageNet weights for one architecture would come from, and if they cannot."""

    arch: str
    cached: bool
    reachable: bool
    reason: str = ""  # why the download is not possible (empty when it is, or cached)

    @property
    def loads(self) -> bool:
        return self.cached or self.reachable

    def message(self) -> str:
        """What to tell a user whose weights cannot load (empty when they can)."""
        if self.loads:
            return ""
        path = imagenet_weights_path(self.arch)
        return (
            f"The ImageNet weights for {self.arch} are not on this server and cannot be "
            f"downloaded from here ({self.reason}). Choose weights 'None' (or your own file), "
            f"or copy {path.name} into {path.parent} and reload the page."
        )


def _probe(url: str, timeout: float) -> str:
    """'' when ``url`` answers a HEAD request, else the reason it does not."""
    try:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return "" if response.status < 400 else f"HTTP {response.status}"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return str(getattr(exc, "reason", None) or exc)


def imagenet_availability(arch: str, timeout: float = PROBE_TIMEOUT_S) -> WeightsAvailability:
    """Cached, else whether the download URL (or ``$FINETUNE_WEIGHTS_MIRROR``) answers.

    Bounded by ``timeout`` even where name resolution hangs (it ignores socket timeouts).
    """
    if imagenet_weights_cached(arch):
        return WeightsAvailability(arch, cached=True, reachable=True)
    url = imagenet_weights_url(arch)
    pool = ThreadPoolExecutor(1, thread_name_prefix="weights-probe")
    try:
        reason = pool.submit(_probe, url, timeout).result(timeout=timeout + 0.5)
    except FutureTimeout:
        reason = f"no answer from {url} within {timeout:g} s"
    finally:
        pool.shutdown(wait=False)
    return WeightsAvailability(arch, cached=False, reachable=not reason, reason=reason)
