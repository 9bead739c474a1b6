"""Arrays moved onto 2 MiB pages, for the weights a decoding step reads whole.

At batch 1 a decoding step reads every weight once, as fast as memory delivers it (gpt2_small
in bfloat16: 247 MB a step). Read through 4 KiB pages, that stream misses the TLB at every
page and the cores' prefetchers stop at every page's end. On the 2-core AMD EPYC, 248 MB read
from 2 MiB pages came 6-37% faster than from 4 KiB pages (six in-process paired runs, median
14%), and gpt2_small's bfloat16 `generate` calls at batch 1 2-7% faster (bench/RESULTS.md).

Linux gives huge pages to memory that asks for them (transparent huge pages, "madvise" mode
by default); XLA's buffers do not ask, and they are written before anything could. So
`collapse` moves them afterwards (madvise MADV_COLLAPSE, Linux 6.1 and later): the kernel copies
each 2 MiB page onto a huge page, contents unchanged, while the process runs on. It costs about
1 s for gpt2_small's 247 MB, once, so it is for weights prepared once and read many times.
Where the kernel cannot (another OS, an older kernel, huge pages disabled, no free 2 MiB
blocks), and with FLAX_LM_HUGE_PAGES=0, the arrays stay as they are.
"""

import ctypes
import functools
import os
import platform

import jax

HUGE_PAGE = 2 << 20
MADV_COLLAPSE = 25  # linux/mman.h
# a buffer's pages move only for at least half a page of it
SMALLEST = HUGE_PAGE // 2


@functools.cache
def _madvise():
    """libc's madvise, or None off Linux or with FLAX_LM_HUGE_PAGES=0."""
    if platform.system() != "Linux" or os.environ.get("FLAX_LM_HUGE_PAGES", "1") == "0":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise


def collapse(arrays) -> int:
    """Moves the 2 MiB pages that hold the buffers of `arrays` (any pytree; its CPU arrays of
    at least SMALLEST bytes) onto huge pages, where the kernel can, once they are computed;
    returns the bytes of the pages it moved.

    A buffer's first and last pages also hold whatever lies beside it (XLA's other buffers,
    memory not yet used); they move too, their contents as unchanged as the buffer's, unless
    part of them is not mapped. Only the pages wholly inside gpt2_small's projection copies of
    1.2-4.7 MB would have left 40% of their bytes on small pages."""
    madvise = _madvise()
    if madvise is None:
        return 0
    moved = set()
    for array in jax.block_until_ready(jax.tree.leaves(arrays)):
        for shard in array.addressable_shards:
            if shard.device.platform != "cpu" or shard.data.nbytes < SMALLEST:
                continue
            start = shard.data.unsafe_buffer_pointer()
            for page in range(start // HUGE_PAGE * HUGE_PAGE, start + shard.data.nbytes, HUGE_PAGE):
                if page not in moved and not madvise(page, HUGE_PAGE, MADV_COLLAPSE):
                    moved.add(page)
    return len(moved) * HUGE_PAGE
