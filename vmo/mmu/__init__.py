"""The memory-management unit: VMO pages placed in real process memory.

The layer above the objects (`vmo.vm_object`, `vmo.kernel`) and the page sources
(`vmo.pager`), as the MMU and ``VmMapping`` are in Zircon. A reader follows the fault path here:

- `vmo.mmu.uffd`: the userfaultfd and memory binding (cffi, API mode, compiled from the
  system's kernel headers by `vmo.mmu._uffd_build` into ``vmo.mmu._uffd_cffi``).
- `vmo.mmu.fault_handler`: window memory and the fault-handler thread that reads faults,
  performs the VMO lookup and installs pages (crosvm's ``userfaultfd.rs``, CRIU's ``uffd.c``).
- `vmo.mmu.mapping`: mappings (`vmo.Mapping`) and their coherence with the VMOs: the reverse
  map, check-out of written pages, range-change invalidation (docs/coherence.md).
- `vmo.mmu.workload`: workloads in other processes touching mapped VMOs with plain loads and
  stores (`Workload`).

The objects reach this layer only through the `vmo.vm_object.MemoryManagementUnit` protocol,
which `vmo.mmu.mapping` installs when imported. The old paths (``vmo.mapping``, ``vmo.pager.uffd``,
``vmo.pager.fault_handler``, ``vmo.pager.remote``) are kept as aliases of these modules.
"""
