"""The swap page source: staging memory and a swap file under VMOs (crosvm's vmm-swap).

One module per concept, as crosvm's ``swap/src``:

- `vmo.pager.swap.present_list` -- which pages are present in one store;
- `vmo.pager.swap.staging` -- the staging memfd of a region;
- `vmo.pager.swap.file` -- the sparse swap file of a region;
- `vmo.pager.swap.file_truncator` -- giving a swap file's disk back in the background;
- `vmo.pager.swap.region` -- one VMO's staging memory and swap file;
- `vmo.pager.swap.page_handler` -- the moves between arena, staging and file (the policy);
- `vmo.pager.swap.state` -- the state machine, transitions and metrics;
- `vmo.pager.swap.vmo_source` -- the page source the core talks to, one per VMO;
- `vmo.pager.swap.source` -- `SwapSource`, the public object.
"""

from vmo.pager.swap.source import SwapSource
from vmo.pager.swap.state import SwapMetrics, SwapState, SwapStatus, SwapTransition

__all__ = ["SwapMetrics", "SwapSource", "SwapState", "SwapStatus", "SwapTransition"]
